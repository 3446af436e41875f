#include "core/experts/local_expert_executor.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/experts/cpu_expert_device.h"
#include "core/kernels/cpu/gating_rule.h"

namespace moemesh {

LocalExpertExecutor::LocalExpertExecutor(const ExpertWeightsTable* table, ThreadPool* pool)
    : device_(std::make_unique<CpuExpertDevice>(table, pool)), num_experts_(-1) {}

LocalExpertExecutor::LocalExpertExecutor(std::unique_ptr<ExpertDevice> device, int num_experts)
    : device_(std::move(device)), num_experts_(num_experts) {}

LocalExpertExecutor::~LocalExpertExecutor() = default;

absl::Status LocalExpertExecutor::Execute(const ExpertBatch& b, float* out) {
  if (b.on_device && (device_->cuda_device() < 0)) {
    return absl::InvalidArgumentError("this executor's experts take rows in host memory, not on a GPU");
  }
  if (b.routing_on_device) {
    if (!b.on_device || !device_->groups_on_device()) {
      return absl::InvalidArgumentError("this executor's experts take the routing in host memory");
    }
    if (static_cast<long long>(b.num_tokens) * b.slots > kMaxDeviceGroupedRoutes) {
      return absl::InvalidArgumentError(absl::StrCat(b.num_tokens, " tokens of ", b.slots,
                                                     " routes: the GPU groups at most ", kMaxDeviceGroupedRoutes));
    }
    return device_->RunRouted(b, out);
  }
  int num_experts = num_experts_;
  if (num_experts < 0) {  // as many as the batch names, up to any router's limit
    const size_t picks = static_cast<size_t>(b.num_tokens) * b.slots;
    const int top = picks == 0 ? -1 : *std::max_element(b.expert_ids, b.expert_ids + picks);
    if (top >= kMaxGatingExperts) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", b.layer, " is routed to expert ", top,
                                                     ", outside [0, ", kMaxGatingExperts, ")"));
    }
    num_experts = top + 1;
  }
  MM_RETURN_IF_ERROR(GroupByExpert(b, num_experts, &work_));
  for (const ExpertWork::Group& g : work_.groups) {
    if (!device_->Holds(b.layer, g.expert)) {
      return absl::NotFoundError(
          absl::StrCat("expert ", g.expert, " of layer ", b.layer, " is not loaded in this process"));
    }
  }
  return device_->RunCombined(work_, out);
}

}  // namespace moemesh
