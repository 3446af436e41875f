#include "core/experts/cpu_expert_device.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/experts/expert_work.h"
#include "core/experts/ffn.h"
#include "core/model/weights.h"

namespace moemesh {

void ComputeExpertRows(const FfnWeights& expert, const float* hidden_states, int hidden_size,
                       absl::Span<const int> rows, absl::Span<const float> weights, float* out,
                       ThreadPool* pool) {
  const int h = hidden_size, m = static_cast<int>(rows.size());
  std::vector<float> in(static_cast<size_t>(m) * h);
  for (int i = 0; i < m; ++i) {
    std::copy(hidden_states + static_cast<size_t>(rows[i]) * h,
              hidden_states + static_cast<size_t>(rows[i] + 1) * h, in.data() + static_cast<size_t>(i) * h);
  }
  RunFfn(expert, in.data(), m, out, pool);
  for (int i = 0; i < m; ++i) {
    float* o = out + static_cast<size_t>(i) * h;
    for (int d = 0; d < h; ++d) o[d] *= weights[i];
  }
}

bool CpuExpertDevice::Holds(int layer, int expert) const { return table_->Find(layer, expert) != nullptr; }

absl::Status CpuExpertDevice::Run(const ExpertWork& work, float* out) {
  if (work.on_device) return absl::InvalidArgumentError("the CPU expert device was handed rows in GPU memory");
  absl::MutexLock lock(&mu_);
  for (const ExpertWork::Group& g : work.groups) {
    const FfnWeights* w = table_->Find(work.layer, g.expert);
    if (w == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("expert ", g.expert, " of layer ", work.layer, " is not loaded on this CPU"));
    }
    if (w->gate.cols != work.hidden_size) {
      return absl::InvalidArgumentError(absl::StrCat("hidden size ", work.hidden_size, " does not match expert ",
                                                     g.expert, " of layer ", work.layer, " (", w->gate.cols, ")"));
    }
    ComputeExpertRows(*w, work.hidden_states, work.hidden_size, g.rows, g.weights, out, pool_);
    out += g.rows.size() * static_cast<size_t>(work.hidden_size);
  }
  return absl::OkStatus();
}

}  // namespace moemesh
