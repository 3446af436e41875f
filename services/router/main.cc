// moemesh-router: attention, gating and sampling for a continuous batch,
// with the routed experts on expert workers (or in this process).
//   moemesh-router --model DIR [--experts "a|b,c"] [--port 0] [--threads T]
// Prints "listening on HOST:PORT" once serving; stops on SIGINT/SIGTERM.

#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/engine/engine.h"
#include "core/engine/generation_loop.h"
#include "core/engine/scheduler.h"
#include "core/experts/placement.h"
#include "core/kv/host_kv_tier.h"
#include "core/kv/kv_dtype.h"
#include "core/quant/quantize.h"
#ifdef MOEMESH_WITH_CUDA
#include "core/engine/cuda/cuda_forward_pass.h"
#include "core/experts/cuda/cuda_expert_device.h"
#include "core/kernels/cuda/cuda_runtime_util.h"
#include "services/expert_client/cuda_ipc_transport.h"
#endif
#include "prometheus/registry.h"
#include "services/common/device_flag.h"
#include "services/common/service_main.h"
#include "services/expert_client/remote_expert_executor.h"
#include "services/kvcache_client/kvcache_tier.h"
#include "services/router/router_metrics.h"
#include "services/router/router_service.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory");
ABSL_FLAG(std::string, experts, "",
          "expert workers: shards separated by ',', replicas of a shard by '|', or a shard's replicas found again "
          "and again at dns:///NAME:PORT (every address of NAME) or file:PATH (the addresses listed); empty runs the "
          "experts here");
ABSL_FLAG(int, experts_resolve_ms, 5000,
          "how often shards given as dns:/// or file: are asked for their replicas (new ones are used within this "
          "long, gone ones dropped)");
ABSL_FLAG(std::string, placement, "", "placement file (JSON) the expert workers were started with; default: modulo");
ABSL_FLAG(std::string, expert_transport, "auto",
          "auto: with --device cuda, rows shared in GPU memory (cuda-ipc) with GPU workers on this host that hold "
          "whole layers; else Dispatch over a worker's raw data channel when it offers one, else the gRPC stream; "
          "frames: never cuda-ipc; grpc: always the gRPC stream");
ABSL_FLAG(std::string, cuda_ipc_sync, "auto",
          "how a cuda-ipc router and worker order their GPU work: gpu (interprocess events; each answer read "
          "before this GPU waits), counter (words in GPU memory each side's GPU sets and the other's waits for; "
          "answers read later, so no host waits a round trip per layer), host (each side waits on its host), or "
          "auto (counter). On one GPU run both under MPS (docs/OPERATIONS.md)");
ABSL_FLAG(std::string, expert_combine, "auto",
          "who adds a token's expert rows: auto (the worker, for layers whose experts are all on one shard: the "
          "same sums, top_k times fewer rows back; else the router), workers (each worker adds what it holds and "
          "the router the shards' sums: results move by f32 rounding where a token's experts are on several "
          "shards), or router");
ABSL_FLAG(std::string, expert_rows, "auto",
          "the rows' dtype on the wire to the expert workers: auto (bf16, half the bytes, to workers where that "
          "changes nothing: GPU workers; f32 to others), f32, bf16 (everywhere; CPU workers then see rounded rows), "
          "or fp8 (a quarter of f32's bytes: E4M3 with a scale per 128 columns, as DeepSeek-V3 quantizes "
          "activations; results move by FP8 rounding; workers that do not take it get what auto sends)");
ABSL_FLAG(std::string, expert_answers, "f32",
          "the answers' dtype on the wire from the expert workers: f32 (exact), or bf16 (half the bytes back, as "
          "DeepEP combines; results move by bf16 rounding; workers that do not offer it answer f32)");
ABSL_FLAG(int, experts_connect_timeout_ms, 10000, "how long to wait for the expert workers at start");
ABSL_FLAG(int, expert_retry_tokens, 10,
          "retry throttling of expert calls (gRPC's): each failed call spends a token, each answered one earns 0.1; "
          "past half spent, a failed call is not sent to another replica; 0 never retries");
ABSL_FLAG(int, expert_hedge_ms, 0,
          "send a shard's request still unanswered after this long to its next live replica too, and take the first "
          "answer (over the data channel; not the gRPC stream); hedges are held back with the retries past half the "
          "retry budget; 0: never");
ABSL_FLAG(int, expert_eject_ms, 5000,
          "after an expert replica fails or times out, pass it over for this long while its shard has others; then "
          "the next request probes it");
ABSL_FLAG(int, expert_timeout_ms, 0,
          "give up an expert replica silent this long while its answer is awaited (stopped, wedged) and send the "
          "request to the shard's next replica; 0: wait forever");
ABSL_FLAG(std::string, quantize, "none",
          "without --experts: quantize the experts as they load: none, int8 (a scale a row), int4 (groups of 128), "
          "int4:G or int4:G:asym (G 32, 64 or 128), :q8 after an int4 form for int8 inputs; the CPU only");
ABSL_FLAG(bool, bf16_inputs, false,
          "multiply BF16 weights (attention, shared experts, LM head, and the experts in this process; not the "
          "gates) by inputs rounded to bf16, as a GPU does (AVX-512 BF16 where the CPU has it: prefill 1.3-1.8x "
          "faster); results move by bf16 rounding; the CPU only (workers take their own --bf16-inputs)");
ABSL_FLAG(int, micro_batches, 1,
          "2: split each step of several sequences into two micro-batches in ping-pong, so that one's attention "
          "runs while the other's experts are away on the workers (needs --experts; the CPU router for now); 1: "
          "one batch a step");
ABSL_FLAG(int, threads, 1, "CPU threads for attention (and local experts)");
ABSL_FLAG(std::string, device, "cpu",
          "where attention, gating and the LM head run, and the experts without --experts: cpu, or cuda[:N] (GPU N, "
          "default 0)");
ABSL_FLAG(bool, enforce_eager, false,
          "with --device cuda: launch every kernel of every step, never CUDA graphs (by default decode steps of up "
          "to 32 tokens whose experts run on this GPU, or on workers over cuda-ipc with counters (--cuda-ipc-sync auto or counter), are "
          "captured per step shape and replayed as one launch)");
ABSL_FLAG(int, kv_cache_tokens, 65536, "capacity of the paged KV cache, in tokens");
ABSL_FLAG(std::string, kv_cache_dtype, "auto",
          "what the KV cache stores: auto (bfloat16 with --device cuda, float32 on the CPU), float32, bfloat16, or "
          "fp8 / fp8_e4m3 (scale 1: keys and values past +-448 saturate); other than float32 needs --device cuda");
ABSL_FLAG(int, kv_block_size, 16, "tokens per KV-cache block");
ABSL_FLAG(int, max_running, 64, "requests in the batch at once");
ABSL_FLAG(int, max_waiting, 256, "requests waiting for admission before RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_step_tokens, 2048, "tokens per forward step (the prefill budget)");
ABSL_FLAG(int, prefill_chunk, 512, "longest prompt piece of one request per step");
ABSL_FLAG(bool, prefix_caching, true,
          "reuse the KV-cache blocks of prompts seen before (their full blocks of --kv-block-size tokens); "
          "--prefix-caching=false computes every prompt in full");
ABSL_FLAG(int64_t, kv_host_cache_mb, 0,
          "with prefix caching: a tier of KV blocks in host memory below the cache, in MiB (0: none); blocks "
          "the cache drops come back from it by a copy");
ABSL_FLAG(std::string, kvcache, "",
          "with prefix caching: a kvcache service (HOST:PORT, or replicas HOST:PORT,HOST:PORT,... over which "
          "sequences are spread) below the cache (and the host tier): every full block goes there, and a prompt's "
          "blocks found there are fetched instead of computed");
ABSL_FLAG(int, kvcache_timeout_ms, 500, "how long a fetch from the kvcache service may take before computing instead");
ABSL_FLAG(int, kvcache_shared_memory_mb, 64,
          "memory shared with a kvcache service on this host per data channel connection (the blocks' bytes skip the "
          "socket; a call's blocks past it go through it); 0: none");

namespace moemesh {
namespace {

struct Options {
  std::string model_dir;
  std::string experts;  // empty: the experts run here
  std::string placement;
  std::string expert_transport;
  std::string cuda_ipc_sync;
  std::string expert_rows;
  std::string expert_answers;
  std::string expert_combine;
  int experts_connect_timeout_ms = 0;
  int expert_timeout_ms = 0;
  int expert_eject_ms = 0;
  int expert_hedge_ms = 0;
  int experts_resolve_ms = 0;
  int expert_retry_tokens = 0;
  std::string device;
  std::string quantize;
  bool enforce_eager = false;
  std::string kv_cache_dtype;
  EngineOptions engine;  // threads, KV cache, prefill chunk; the devices are set from `device`
  int max_running = 0, max_waiting = 0, max_step_tokens = 0;
  int64_t kv_host_cache_mb = 0;
  std::string kvcache;
  int kvcache_timeout_ms = 0;
  int kvcache_shared_memory_mb = 0;

  static Options FromFlags() {
    Options o;
    o.model_dir = absl::GetFlag(FLAGS_model);
    o.experts = absl::GetFlag(FLAGS_experts);
    o.placement = absl::GetFlag(FLAGS_placement);
    o.expert_transport = absl::GetFlag(FLAGS_expert_transport);
    o.cuda_ipc_sync = absl::GetFlag(FLAGS_cuda_ipc_sync);
    o.expert_rows = absl::GetFlag(FLAGS_expert_rows);
    o.expert_answers = absl::GetFlag(FLAGS_expert_answers);
    o.expert_combine = absl::GetFlag(FLAGS_expert_combine);
    o.experts_connect_timeout_ms = absl::GetFlag(FLAGS_experts_connect_timeout_ms);
    o.expert_timeout_ms = absl::GetFlag(FLAGS_expert_timeout_ms);
    o.expert_eject_ms = absl::GetFlag(FLAGS_expert_eject_ms);
    o.expert_hedge_ms = absl::GetFlag(FLAGS_expert_hedge_ms);
    o.experts_resolve_ms = absl::GetFlag(FLAGS_experts_resolve_ms);
    o.expert_retry_tokens = absl::GetFlag(FLAGS_expert_retry_tokens);
    o.device = absl::GetFlag(FLAGS_device);
    o.quantize = absl::GetFlag(FLAGS_quantize);
    if (absl::StatusOr<QuantSpec> q = ParseQuantSpec(o.quantize); q.ok()) o.engine.quantize_experts = *q;
    o.engine.bf16_inputs = absl::GetFlag(FLAGS_bf16_inputs);
    o.enforce_eager = absl::GetFlag(FLAGS_enforce_eager);
    o.kv_cache_dtype = absl::GetFlag(FLAGS_kv_cache_dtype);
    o.engine.num_threads = absl::GetFlag(FLAGS_threads);
    o.engine.micro_batches = absl::GetFlag(FLAGS_micro_batches);
    o.engine.kv_cache_tokens = absl::GetFlag(FLAGS_kv_cache_tokens);
    o.engine.kv_block_size = absl::GetFlag(FLAGS_kv_block_size);
    o.engine.prefill_chunk = absl::GetFlag(FLAGS_prefill_chunk);
    o.engine.prefix_caching = absl::GetFlag(FLAGS_prefix_caching);
    o.max_running = absl::GetFlag(FLAGS_max_running);
    o.max_waiting = absl::GetFlag(FLAGS_max_waiting);
    o.max_step_tokens = absl::GetFlag(FLAGS_max_step_tokens);
    o.kv_host_cache_mb = absl::GetFlag(FLAGS_kv_host_cache_mb);
    o.kvcache = absl::GetFlag(FLAGS_kvcache);
    o.kvcache_timeout_ms = absl::GetFlag(FLAGS_kvcache_timeout_ms);
    o.kvcache_shared_memory_mb = absl::GetFlag(FLAGS_kvcache_shared_memory_mb);
    return o;
  }

  absl::Status Validate() const {
    if (model_dir.empty()) return absl::InvalidArgumentError("--model DIR is required");
    absl::StatusOr<int> gpu = ParseDeviceFlag(device);
    if (!gpu.ok()) return gpu.status();
    if (enforce_eager && *gpu < 0) {
      return absl::InvalidArgumentError("--enforce-eager applies to --device cuda[:N] (the CPU has no graphs)");
    }
    if (absl::Status st = ParseKvCacheDType(kv_cache_dtype, *gpu >= 0).status(); !st.ok()) return st;
#ifndef MOEMESH_WITH_CUDA
    if (*gpu >= 0) {
      return absl::InvalidArgumentError("--device " + device + ": this build has no CUDA (nvcc was not found)");
    }
#endif
    if (max_running < 1 || max_waiting < 0 || max_step_tokens < max_running) {
      return absl::InvalidArgumentError(
          "need --max-running >= 1, --max-waiting >= 0 and --max-step-tokens >= --max-running");
    }
    if (expert_transport != "auto" && expert_transport != "frames" && expert_transport != "grpc") {
      return absl::InvalidArgumentError("--expert-transport must be auto, frames or grpc");
    }
    if (cuda_ipc_sync != "auto" && cuda_ipc_sync != "counter" && cuda_ipc_sync != "gpu" && cuda_ipc_sync != "host") {
      return absl::InvalidArgumentError("--cuda-ipc-sync must be auto, counter, gpu or host");
    }
    if (experts_resolve_ms < 1) return absl::InvalidArgumentError("--experts-resolve-ms must be positive");
    if (expert_timeout_ms < 0 || expert_eject_ms < 0 || expert_retry_tokens < 0 || expert_hedge_ms < 0) {
      return absl::InvalidArgumentError(
          "--expert-timeout-ms, --expert-eject-ms, --expert-hedge-ms and --expert-retry-tokens must not be negative");
    }
    if (absl::StatusOr<QuantSpec> q = ParseQuantSpec(quantize); !q.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--quantize: ", q.status().message()));
    }
    if (absl::Status st = CheckCpuOnlyFlags(device, *gpu, quantize, engine.quantize_experts.kind != QuantKind::kNone,
                                            engine.bf16_inputs);
        !st.ok()) {
      return st;
    }
    if (engine.micro_batches != 1 && engine.micro_batches != 2) {
      return absl::InvalidArgumentError("--micro-batches must be 1 or 2");
    }
    if (engine.micro_batches > 1 && *gpu >= 0) {
      return absl::InvalidArgumentError("--micro-batches 2 runs on the CPU router for now (--device cpu)");
    }
    if (absl::Status st = RemoteExpertExecutor::ParseRows(expert_rows).status(); !st.ok()) return st;
    if (absl::Status st = RemoteExpertExecutor::ParseAnswers(expert_answers).status(); !st.ok()) return st;
    if (absl::Status st = RemoteExpertExecutor::ParseCombine(expert_combine).status(); !st.ok()) return st;
    if (kv_host_cache_mb < 0) return absl::InvalidArgumentError("--kv-host-cache-mb must not be negative");
    if (kvcache_timeout_ms <= 0) return absl::InvalidArgumentError("--kvcache-timeout-ms must be positive");
    if (kvcache_shared_memory_mb < 0 || kvcache_shared_memory_mb > 1024) {
      return absl::InvalidArgumentError("--kvcache-shared-memory-mb is 0 (none) to 1024");
    }
    if ((kv_host_cache_mb > 0 || !kvcache.empty()) && !engine.prefix_caching) {
      return absl::InvalidArgumentError("--kv-host-cache-mb and --kvcache are tiers below prefix caching: "
                                        "they need --prefix-caching");
    }
    // The expert workers' flags mean nothing without workers: say so rather
    // than ignore them.
    if (!experts.empty() && engine.quantize_experts.kind != QuantKind::kNone) {
      return absl::InvalidArgumentError("--quantize applies to experts in this process: the workers of --experts "
                                        "take their own --quantize");
    }
    if (experts.empty()) {
      for (const auto& [flag, set] : {std::pair<const char*, bool>{"--expert-transport", expert_transport != "auto"},
                                      {"--expert-rows", expert_rows != "auto"},
                                      {"--expert-answers", expert_answers != "f32"},
                                      {"--cuda-ipc-sync", cuda_ipc_sync != "auto"},
                                      {"--expert-combine", expert_combine != "auto"},
                                      {"--micro-batches", engine.micro_batches != 1},
                                      {"--placement", !placement.empty()}}) {
        if (set) return absl::InvalidArgumentError(std::string(flag) + " applies to expert workers: it needs --experts");
      }
    }
    return absl::OkStatus();
  }

  // The GPU of --device (after Validate); -1 for the CPU.
  int gpu() const { return ParseDeviceFlag(device).value_or(-1); }
};

int Main(int argc, char** argv) {
  ServiceMain service_main("moemesh-router", argc, argv, "moemesh-router --model DIR [--experts \"a|b,c\"] [--port P]");
  const Options options = Options::FromFlags();
  if (absl::Status st = options.Validate(); !st.ok()) return service_main.Fail(st, 2);

  EngineOptions engine_options = options.engine;
#ifdef MOEMESH_WITH_CUDA
  if (const int gpu = options.gpu(); gpu >= 0) {
    CudaForwardPass::Options pass_options;
    pass_options.cuda_graphs = !options.enforce_eager;
    pass_options.kv_dtype = *ParseKvCacheDType(options.kv_cache_dtype, true);  // checked by Validate
    engine_options.forward_pass = CudaForwardPass::Factory(gpu, pass_options);
    // Experts run here (no --experts): on the same GPU, rows in place.
    engine_options.expert_device = CudaExpertDevice::Factory(gpu);
  }
#endif
  // The tiers below the cache, nearest first.
  std::shared_ptr<HostKvTier> host_tier;
  std::shared_ptr<KvCacheTier> kvcache_tier;
  std::vector<KvTier*> tiers;
  if (options.kv_host_cache_mb > 0) {
    host_tier = std::make_shared<HostKvTier>(options.kv_host_cache_mb << 20);
#ifdef MOEMESH_WITH_CUDA
    // Below a GPU's cache: page-locked, so blocks go back by DMA.
    if (options.gpu() >= 0) {
      auto pinned = HostKvTier::WithArena(options.kv_host_cache_mb << 20, PinnedHostArena);
      if (!pinned.ok()) return service_main.Fail(pinned.status(), 2);
      host_tier = std::move(*pinned);
    }
#endif
    tiers.push_back(host_tier.get());
  }
  if (!options.kvcache.empty()) {
    KvCacheTier::Options kv;
    kv.addresses = absl::StrSplit(options.kvcache, ',');
    kv.fetch_timeout = absl::Milliseconds(options.kvcache_timeout_ms);
    kv.shared_memory_bytes = int64_t{options.kvcache_shared_memory_mb} << 20;
    auto t = KvCacheTier::Create(kv);
    if (!t.ok()) return service_main.Fail(t.status(), 2);
    kvcache_tier = std::move(*t);
    tiers.push_back(kvcache_tier.get());
  }
  if (tiers.size() == 1) {
    engine_options.kv_tier = host_tier ? std::shared_ptr<KvTier>(host_tier) : std::shared_ptr<KvTier>(kvcache_tier);
  } else if (tiers.size() > 1) {
    // The chain points at the tiers; its deleter keeps them alive with it.
    engine_options.kv_tier = std::shared_ptr<KvTier>(new KvTierChain(tiers), [host_tier, kvcache_tier](KvTier* t) {
      delete t;
    });
  }

  std::unique_ptr<ExpertExecutor> remote;
  RemoteExpertExecutor* remote_view = nullptr;  // owned by the engine
  if (!options.experts.empty()) {
    auto shards = RemoteExpertExecutor::ParseAddresses(options.experts);
    if (!shards.ok()) return service_main.Fail(shards.status(), 2);
    auto config = LoadModelConfig(options.model_dir);
    if (!config.ok()) return service_main.Fail(config.status(), 2);
    std::optional<ShardPlacement> placement;
    if (!options.placement.empty()) {
      auto p = ShardPlacement::Load(options.placement, config->num_layers, config->num_experts);
      if (!p.ok()) return service_main.Fail(p.status(), 2);
      placement = std::move(*p);
    }
    RemoteExpertExecutor::Options remote_options;
    remote_options.connect_timeout_ms = options.experts_connect_timeout_ms;
    remote_options.placement = placement ? &*placement : nullptr;
    remote_options.use_data_channel = options.expert_transport != "grpc";
    remote_options.warn = [&service_main](const std::string& m) { service_main.Warn(m); };
#ifdef MOEMESH_WITH_CUDA
    if (options.gpu() >= 0 && options.expert_transport == "auto") {
      remote_options.cuda_device = options.gpu();
      remote_options.device_rows = CudaIpcTransport::Wrapper(options.gpu(), config->num_experts_per_tok, /*initial_tokens=*/256,
                                                             *CudaIpcTransport::ParseSync(options.cuda_ipc_sync));
    }
#endif
    // Decode steps over cuda-ipc with a counter replay as CUDA graphs (the
    // worker's requests sent as the graph starts); other syncs run eager.
    remote_options.graph_steps = !options.enforce_eager;
    remote_options.receive_timeout_ms = options.expert_timeout_ms;
    remote_options.eject_ms = options.expert_eject_ms;
    remote_options.hedge_ms = options.expert_hedge_ms;
    remote_options.resolve_period_ms = options.experts_resolve_ms;
    remote_options.retry_tokens = options.expert_retry_tokens;
    remote_options.rows = *RemoteExpertExecutor::ParseRows(options.expert_rows);  // checked by Validate
    remote_options.answers = *RemoteExpertExecutor::ParseAnswers(options.expert_answers);
    remote_options.combine = *RemoteExpertExecutor::ParseCombine(options.expert_combine);
    auto r = RemoteExpertExecutor::Connect(*shards, config->hidden_size, remote_options);
    if (!r.ok()) return service_main.Fail(r.status(), 1);
    remote_view = r->get();
    remote = std::move(*r);
    const std::vector<std::string> transports = remote_view->transports();
    const std::vector<RemoteExpertExecutor::Rows> rows = remote_view->row_types();
    const std::vector<RemoteExpertExecutor::Answers> answers = remote_view->answer_types();
    for (size_t i = 0; i < transports.size(); ++i) {
      // Rows that stay on a GPU are never converted; else the wire's dtypes.
      std::string wire = " (rows stay on the GPU)";
      if (remote_view->cuda_device() < 0) {
        wire = absl::StrCat(", rows ",
                            rows[i] == RemoteExpertExecutor::Rows::kFp8    ? "fp8"
                            : rows[i] == RemoteExpertExecutor::Rows::kBf16 ? "bf16"
                                                                          : "f32",
                            ", answers ", answers[i] == RemoteExpertExecutor::Answers::kBf16 ? "bf16" : "f32");
      }
      std::printf("expert shard %zu: %s%s\n", i, transports[i].c_str(), wire.c_str());
    }
    std::fflush(stdout);
  }
  auto engine = Engine::Create(options.model_dir, engine_options, std::move(remote));
  if (!engine.ok()) return service_main.Fail(engine.status(), 2);
  std::printf("%s\n", (*engine)->DescribeCache().c_str());
  std::fflush(stdout);

  // Metrics: the step observer runs on the loop's thread, after each step.
  auto registry = std::make_shared<prometheus::Registry>();
  const ModelConfig& config = (*engine)->config();
  RouterMetrics metrics(*registry, config.num_layers, config.num_experts);
  if (remote_view != nullptr) {
    remote_view->set_dispatch_observer([&metrics](const std::string& worker, double s) {
      metrics.ObserveDispatch(worker, s);
    });
  }
  double combined = 0;  // RemoteExpertExecutor::combine_seconds at the last step
  auto on_step = [&metrics, remote_view, &combined, host = host_tier.get()](const StepStats& s,
                                                                            const GenerationLoop::Stats& l) {
    const double now = remote_view ? remote_view->combine_seconds() : 0;
    metrics.OnStep(s, l, now - combined);
    combined = now;
    if (remote_view != nullptr) {
      metrics.ObserveExpertCalls(remote_view->retries(), remote_view->hedges());
      metrics.ObserveExpertWire(remote_view->row_bytes_sent(), remote_view->answer_bytes_received());
    }
    if (host != nullptr) metrics.ObserveHostTier(host->bytes(), host->blocks(), host->evictions());
  };
  GenerationLoop loop((*engine)->NewScheduler(options.max_running, options.max_step_tokens), options.max_waiting,
                      on_step);
  RouterServiceImpl service(&loop);
  // Streams in progress may finish for a while, then are cancelled; the
  // loop stops after the server (it is destroyed after Serve returns).
  service_main.set_service_names({v1::Router::service_full_name()});
  return service_main.Serve({&service}, registry, [&] { return service.active_calls(); });
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) { return moemesh::Main(argc, argv); }
