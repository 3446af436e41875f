#include "services/expert/expert_worker.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/common/status_macros.h"
#include "core/experts/cpu_expert_device.h"
#include "core/experts/expert_executor.h"
#include "core/kernels/cpu/gating_rule.h"
#include "core/experts/placement.h"
#include "core/model/safetensors.h"
#include "core/tensor/thread_pool.h"

namespace moemesh {

ExpertWorker::~ExpertWorker() = default;

absl::StatusOr<std::unique_ptr<ExpertWorker>> ExpertWorker::Create(const Options& options) {
  if (options.threads < 1) return absl::InvalidArgumentError("--threads must be >= 1");
  MM_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(options.model_dir));
  ShardPlacement placement(options.num_shards);
  Options resolved = options;
  if (!options.placement_file.empty()) {
    MM_ASSIGN_OR_RETURN(placement, ShardPlacement::Load(options.placement_file, config.num_layers, config.num_experts));
    resolved.num_shards = placement.num_shards();
  }
  MM_RETURN_IF_ERROR(ShardPlacement::Validate(resolved.shard_index, resolved.num_shards, config.num_experts));
  MM_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(options.model_dir));
  WeightLoadOptions load;
  load.load_dense = false;  // experts only: attention and the rest live on the router
  load.load_expert = [&](int layer, int expert) { return placement.Holds(options.shard_index, layer, expert); };
  load.quantize_experts = options.quantize;
  load.bf16_inputs = options.bf16_inputs;
  std::unique_ptr<ExpertWorker> w(new ExpertWorker);
  w->pool_ = std::make_unique<ThreadPool>(options.threads);
  load.pool = w->pool_.get();
  MM_ASSIGN_OR_RETURN(ModelWeights weights, LoadWeights(std::move(ckpt), config, load));
  w->options_ = resolved;
  w->config_ = config;
  w->weights_ = std::make_unique<ModelWeights>(std::move(weights));
  if (options.device) {
    MM_ASSIGN_OR_RETURN(w->device_, options.device(w->config_, *w->weights_));
  } else {
    w->device_ = std::make_unique<CpuExpertDevice>(&w->weights_->experts, w->pool_.get());
  }
  return w;
}

std::string ExpertWorker::results_tag() const {
  std::vector<std::string> parts;
  if (options_.quantize.kind != QuantKind::kNone) parts.push_back("quantize=" + QuantSpecName(options_.quantize));
  if (options_.bf16_inputs) parts.push_back("bf16_inputs");
  if (device_->rounds_rows_to_bf16()) parts.push_back("gpu");
  return absl::StrJoin(parts, " ");
}

std::vector<std::pair<int, std::vector<int>>> ExpertWorker::HeldExperts() const {
  std::vector<std::pair<int, std::vector<int>>> out;
  for (int l = 0; l < config_.num_layers; ++l) {
    std::vector<int> experts;
    for (int e = 0; e < config_.num_experts; ++e) {
      if (weights_->experts.Find(l, e) != nullptr) experts.push_back(e);
    }
    if (!experts.empty()) out.emplace_back(l, std::move(experts));
  }
  return out;
}

absl::Status ExpertWorker::CheckMoeLayer(int layer) const {
  const ModelConfig& c = config_;
  if (layer < 0 || layer >= c.num_layers || !c.is_moe_layer[layer]) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " is not a MoE layer of this model"));
  }
  return absl::OkStatus();
}

absl::Status ExpertWorker::Validate(const ExpertWork& work, size_t* total_rows) const {
  const ModelConfig& c = config_;
  MM_RETURN_IF_ERROR(CheckMoeLayer(work.layer));
  if (work.hidden_size != c.hidden_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("hidden size ", work.hidden_size, " does not match the model's ", c.hidden_size));
  }
  size_t total = 0;
  std::vector<bool> seen(c.num_experts, false);
  for (const ExpertWork::Group& g : work.groups) {
    if (g.expert < 0 || g.expert >= c.num_experts) {
      return absl::InvalidArgumentError(absl::StrCat("expert ", g.expert, " is outside [0, ", c.num_experts, ")"));
    }
    // One group per expert: a router sends each expert's rows together.
    if (seen[g.expert]) {
      return absl::InvalidArgumentError(
          absl::StrCat("expert ", g.expert, " has two groups in one dispatch; send its rows in one"));
    }
    seen[g.expert] = true;
    if (!device_->Holds(work.layer, g.expert)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "expert ", g.expert, " of layer ", work.layer, " is not on shard ", options_.shard_index, " of ",
          options_.num_shards));
    }
    if (g.rows.size() != g.weights.size()) {
      return absl::InvalidArgumentError(absl::StrCat("expert ", g.expert, ": ", g.rows.size(), " rows but ",
                                                     g.weights.size(), " weights"));
    }
    for (int r : g.rows) {
      if (r < 0 || r >= work.num_rows) {
        return absl::InvalidArgumentError(
            absl::StrCat("expert ", g.expert, ": row ", r, " is outside [0, ", work.num_rows, ")"));
      }
    }
    total += g.rows.size();
  }
  *total_rows = total;
  return absl::OkStatus();
}

absl::Status ExpertWorker::Run(const ExpertWork& work, std::vector<float>* out) {
  if (work.on_device) return absl::InvalidArgumentError("an expert worker takes rows in host memory");
  size_t total = 0;
  MM_RETURN_IF_ERROR(Validate(work, &total));
  out->resize(total * static_cast<size_t>(config_.hidden_size));
  return device_->Run(work, out->data());
}

absl::Status ExpertWorker::RunCombined(const ExpertWork& work, std::vector<float>* out) {
  if (work.on_device) return absl::InvalidArgumentError("an expert worker takes rows in host memory");
  size_t total = 0;
  MM_RETURN_IF_ERROR(Validate(work, &total));
  out->resize(static_cast<size_t>(work.num_rows) * config_.hidden_size);
  return device_->RunCombined(work, out->data());
}

absl::Status ExpertWorker::RunCombinedOnDevice(const ExpertWork& work, float* out) {
  if (!work.on_device || device_->cuda_device() < 0) {
    return absl::InvalidArgumentError("RunCombinedOnDevice takes rows in the memory of the experts' GPU");
  }
  size_t total = 0;
  MM_RETURN_IF_ERROR(Validate(work, &total));
  return device_->RunCombined(work, out);
}

absl::Status ExpertWorker::RunRoutedOnDevice(const ExpertBatch& batch, float* out) {
  MM_RETURN_IF_ERROR(CheckMoeLayer(batch.layer));
  if (batch.num_tokens < 0 || batch.slots < 1 ||
      static_cast<int64_t>(batch.num_tokens) * batch.slots > kMaxDeviceGroupedRoutes) {
    return absl::InvalidArgumentError(absl::StrCat(batch.num_tokens, " tokens of ", batch.slots,
                                                   " routed experts: a GPU groups at most ",
                                                   kMaxDeviceGroupedRoutes, " routes itself"));
  }
  if (!device_->groups_on_device()) {
    return absl::FailedPreconditionError("this worker's experts cannot group rows on a GPU (no GPU, or not whole layers)");
  }
  return device_->RunRouted(batch, out);
}

}  // namespace moemesh
