#include "core/experts/expert_device.h"

#include <vector>

#include "core/common/status_macros.h"
#include "core/experts/expert_work.h"

namespace moemesh {

absl::Status ExpertDevice::RunCombined(const ExpertWork& work, float* out) {
  if (work.on_device) {
    return absl::InvalidArgumentError("this expert device combines rows in host memory only");
  }
  std::vector<float> rows(work.total_rows() * static_cast<size_t>(work.hidden_size));
  MM_RETURN_IF_ERROR(Run(work, rows.data()));
  CombineExpertRows(work, rows.data(), work.num_rows, out);
  return absl::OkStatus();
}

absl::Status ExpertDevice::RunRouted(const ExpertBatch&, float*) {
  return absl::FailedPreconditionError("this expert device groups rows on the host only");
}

}  // namespace moemesh
