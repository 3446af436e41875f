#include "core/engine/expert_executor.h"

#include <map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/engine/ffn.h"
#include "core/model/weights.h"

namespace moemesh {

absl::Status LocalExpertExecutor::Execute(const ExpertBatch& b, float* out) {
  const int h = b.hidden_size;
  // Rows per expert, in increasing expert id (std::map order).
  std::map<int, std::vector<std::pair<int, float>>> groups;
  for (int t = 0; t < b.num_tokens; ++t) {
    for (int j = 0; j < b.slots; ++j) {
      int e = b.expert_ids[t * b.slots + j];
      if (e >= 0) groups[e].push_back({t, b.weights[t * b.slots + j]});
    }
  }
  std::fill(out, out + static_cast<size_t>(b.num_tokens) * h, 0.0f);
  std::vector<float> in, res;
  for (const auto& [e, rows] : groups) {
    const FfnWeights* w = table_->Find(b.layer, e);
    if (w == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("expert ", e, " of layer ", b.layer, " is not loaded in this process"));
    }
    if (w->gate.cols != h) {
      return absl::InvalidArgumentError(absl::StrCat("hidden size ", h, " does not match expert ",
                                                     e, " of layer ", b.layer, " (", w->gate.cols, ")"));
    }
    const int m = static_cast<int>(rows.size());
    in.resize(static_cast<size_t>(m) * h);
    res.resize(in.size());
    for (int i = 0; i < m; ++i) {
      std::copy(b.hidden_states + static_cast<size_t>(rows[i].first) * h,
                b.hidden_states + static_cast<size_t>(rows[i].first + 1) * h, in.data() + i * h);
    }
    RunFfn(*w, in.data(), m, res.data(), pool_);
    for (int i = 0; i < m; ++i) {
      float* o = out + static_cast<size_t>(rows[i].first) * h;
      const float wt = rows[i].second;
      const float* r = res.data() + static_cast<size_t>(i) * h;
      for (int d = 0; d < h; ++d) o[d] += r[d] * wt;
    }
  }
  return absl::OkStatus();
}

}  // namespace moemesh
