#include "core/engine/engine.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/common/status_macros.h"
#include "core/experts/cpu_expert_device.h"
#include "core/experts/local_expert_executor.h"
#include "core/engine/kv_cache.h"
#include "core/engine/cpu_forward_pass.h"
#include "core/engine/scheduler.h"
#include "core/kv/fingerprint.h"
#include "core/model/safetensors.h"
#include "core/model/weights.h"
#include "core/tensor/thread_pool.h"

namespace moemesh {

absl::Status EngineOptions::Validate() const {
  if (num_threads < 1 || num_threads > 1024) return absl::InvalidArgumentError("threads must be in [1, 1024]");
  if (kv_block_size < 1) return absl::InvalidArgumentError("KV block size must be positive");
  if (kv_cache_tokens < kv_block_size) {
    return absl::InvalidArgumentError("KV cache must hold at least one block");
  }
  if (prefill_chunk < 1) return absl::InvalidArgumentError("prefill chunk must be positive");
  if (micro_batches < 1 || micro_batches > 2) return absl::InvalidArgumentError("micro-batches must be 1 or 2");
  return absl::OkStatus();
}

Engine::Engine() = default;
Engine::~Engine() = default;

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const std::string& model_dir,
                                                       const EngineOptions& options,
                                                       std::unique_ptr<ExpertExecutor> experts) {
  MM_RETURN_IF_ERROR(options.Validate());
  MM_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  if (options.gating.temperature > 0 || options.gating.dynamic_k_max > 0) {
    config.gating = options.gating;
  }
  MM_RETURN_IF_ERROR(config.Validate());
  MM_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(model_dir));
  WeightLoadOptions load;
  if (experts) load.load_expert = [](int, int) { return false; };
  load.quantize_experts = options.quantize_experts;
  load.bf16_inputs = options.bf16_inputs;
  std::unique_ptr<Engine> e(new Engine);
  e->options_ = options;
  e->pool_ = std::make_unique<ThreadPool>(options.num_threads);
  load.pool = e->pool_.get();
  MM_ASSIGN_OR_RETURN(ModelWeights w, LoadWeights(std::move(ckpt), config, load));
  e->weights_ = std::make_shared<const ModelWeights>(std::move(w));
  int blocks = (options.kv_cache_tokens + options.kv_block_size - 1) / options.kv_block_size;
  if (options.forward_pass) {
    MM_ASSIGN_OR_RETURN(e->model_, options.forward_pass(config, e->weights_, options.kv_block_size, blocks));
  } else {
    MM_ASSIGN_OR_RETURN(e->model_, CpuForwardPass::Create(config, e->weights_, e->pool_.get(), options.micro_batches));
  }
  const bool remote_experts = experts != nullptr;
  if (experts) {
    e->experts_ = std::move(experts);
  } else if (options.expert_device) {
    MM_ASSIGN_OR_RETURN(std::unique_ptr<ExpertDevice> device, options.expert_device(config, *e->weights_));
    e->experts_ = std::make_unique<LocalExpertExecutor>(std::move(device), config.num_experts);
  } else {
    e->experts_ = std::make_unique<LocalExpertExecutor>(
        std::make_unique<CpuExpertDevice>(&e->weights_->experts, e->pool_.get()), config.num_experts);
  }
  // Blocks are named under the model and the cache layout, so that every
  // process serving this checkpoint names them alike (the kvcache service).
  MM_ASSIGN_OR_RETURN(const BlockHash model_fingerprint, ModelFingerprint(model_dir));
  CacheLayout layout;
  layout.dtype = e->model_->kv_dtype();
  layout.block_size = options.kv_block_size;
  layout.num_layers = config.num_layers;
  layout.k_width = e->model_->kv_k_width();
  layout.v_width = e->model_->kv_v_width();
  const GatingExtensions& g = config.gating;
  std::vector<std::string> extra;
  if (g.temperature > 0 || g.dynamic_k_max > 0) {
    // Every digit: two settings that differ must name different blocks.
    extra.push_back(absl::StrFormat("gating=%.17g/%d/%d/%.17g", g.temperature, g.dynamic_k_min, g.dynamic_k_max,
                                    g.dynamic_k_p));
  }
  // What moves the values this process computes: experts quantized here,
  // products of bf16-rounded inputs, a GPU pass, how the experts compute (a
  // GPU, their workers' options, rows or answers rounded on a wire).
  if (!remote_experts && options.quantize_experts.kind != QuantKind::kNone) {
    extra.push_back("quantize=" + QuantSpecName(options.quantize_experts));
  }
  if (options.bf16_inputs) extra.push_back("bf16_inputs");
  if (const std::string tag = e->model_->ResultsTag(); !tag.empty()) extra.push_back("pass=" + tag);
  if (const std::string tag = e->experts_->ResultsTag(); !tag.empty()) extra.push_back("experts=" + tag);
  layout.extra = absl::StrJoin(extra, " ");
  e->cache_root_ = CacheRoot(model_fingerprint, layout);
  e->cache_layout_ = layout;
  e->cache_ = std::make_unique<KvCache>(config.num_layers, layout.k_width, layout.v_width, options.kv_block_size,
                                        blocks, e->cache_root_);
  return e;
}

const ModelConfig& Engine::config() const { return model_->config(); }

std::string Engine::DescribeCache() const {
  const int blocks = cache_->num_blocks(), size = cache_->block_size();
  std::string line = absl::StrFormat("KV cache: %d tokens (%d blocks of %d), %s, %.2f GiB", blocks * size, blocks,
                                     size, KvDTypeName(cache_layout_.dtype),
                                     static_cast<double>(cache_layout_.BlockBytes()) * blocks / (1 << 30));
  // What else names its blocks: caches computed otherwise share none.
  if (!cache_layout_.extra.empty()) absl::StrAppend(&line, "; blocks named for ", cache_layout_.extra);
  return line;
}

std::unique_ptr<Scheduler> Engine::NewScheduler(int max_running, int max_step_tokens) {
  Scheduler::Options o;
  o.max_running = max_running;
  o.max_step_tokens = max_step_tokens;
  o.prefill_chunk = options_.prefill_chunk;
  o.prefix_caching = options_.prefix_caching;
  o.kv_tier = options_.kv_tier.get();
  return std::make_unique<Scheduler>(model_.get(), cache_.get(), experts_.get(), o);
}

absl::Status Engine::CheckPrompt(const std::vector<int>& prompt) const {
  return ValidatePrompt(prompt, config().vocab_size);
}

absl::StatusOr<std::vector<float>> Engine::Score(const std::vector<int>& prompt) {
  MM_RETURN_IF_ERROR(CheckPrompt(prompt));
  KvSequence seq;
  std::vector<float> logits;
  absl::Status st;
  for (size_t start = 0; start < prompt.size() && st.ok(); start += options_.prefill_chunk) {
    size_t len = std::min<size_t>(options_.prefill_chunk, prompt.size() - start);
    ForwardItem item{&seq, absl::MakeConstSpan(prompt).subspan(start, len), /*all_logits=*/true};
    st = model_->Forward({&item, 1}, cache_.get(), experts_.get(), &logits);
  }
  cache_->Release(&seq);
  if (!st.ok()) return st;
  return logits;
}

absl::StatusOr<GenerateResult> Engine::Generate(const std::vector<int>& prompt,
                                                const GenerateParams& params,
                                                const std::function<void(int)>& on_token) {
  // One request through the same continuous-batching scheduler that serves
  // many: there is one generation loop in moemesh.
  std::unique_ptr<Scheduler> sched = NewScheduler(/*max_running=*/1, /*max_step_tokens=*/options_.prefill_chunk);
  GenerateResult result;
  absl::Status error;
  bool done = false;
  auto id = sched->Add(prompt, params, [&](const StepEvent& ev) {
    if (ev.token >= 0) {
      result.tokens.push_back(ev.token);
      if (on_token) on_token(ev.token);
    }
    if (ev.finished) {
      done = true;
      error = ev.error;
      result.finish_reason = ev.finish_reason;
    }
  });
  if (!id.ok()) return id.status();
  while (!done) {
    absl::Status st = sched->Step();
    if (!st.ok()) return st;
  }
  if (!error.ok()) return error;
  return result;
}

}  // namespace moemesh
