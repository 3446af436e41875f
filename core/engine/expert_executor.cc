#include "core/engine/expert_executor.h"

#include <map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/engine/ffn.h"
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

absl::Status LocalExpertExecutor::Execute(const ExpertBatch& b, float* out) {
  const int h = b.hidden_size;
  // Rows per expert, in increasing expert id (std::map order).
  std::map<int, std::pair<std::vector<int>, std::vector<float>>> groups;
  for (int t = 0; t < b.num_tokens; ++t) {
    for (int j = 0; j < b.slots; ++j) {
      int e = b.expert_ids[t * b.slots + j];
      if (e < 0) continue;
      groups[e].first.push_back(t);
      groups[e].second.push_back(b.weights[t * b.slots + j]);
    }
  }
  std::fill(out, out + static_cast<size_t>(b.num_tokens) * h, 0.0f);
  std::vector<float> res;
  for (const auto& [e, group] : groups) {
    const FfnWeights* w = table_->Find(b.layer, e);
    if (w == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("expert ", e, " of layer ", b.layer, " is not loaded in this process"));
    }
    if (w->gate.cols != h) {
      return absl::InvalidArgumentError(absl::StrCat("hidden size ", h, " does not match expert ",
                                                     e, " of layer ", b.layer, " (", w->gate.cols, ")"));
    }
    const auto& [rows, weights] = group;
    res.resize(rows.size() * static_cast<size_t>(h));
    ComputeExpertRows(*w, b.hidden_states, h, rows, weights, res.data(), pool_);
    for (size_t i = 0; i < rows.size(); ++i) {
      float* o = out + static_cast<size_t>(rows[i]) * h;
      const float* r = res.data() + i * h;
      for (int d = 0; d < h; ++d) o[d] += r[d];
    }
  }
  return absl::OkStatus();
}

}  // namespace moemesh
