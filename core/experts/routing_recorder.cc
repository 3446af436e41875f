#include "core/experts/routing_recorder.h"

#include <algorithm>
#include <utility>

namespace moemesh {

RoutingRecorder::RoutingRecorder(std::unique_ptr<ExpertExecutor> inner, ReadIds read)
    : inner_(std::move(inner)), read_(std::move(read)) {}

absl::Status RoutingRecorder::Execute(const ExpertBatch& batch, float* out) {
  std::vector<int> ids(static_cast<size_t>(batch.num_tokens) * batch.slots);
  if (read_) {
    if (absl::Status st = read_(batch, &ids); !st.ok()) return st;
  } else {
    std::copy(batch.expert_ids, batch.expert_ids + ids.size(), ids.begin());
  }
  calls_.push_back(std::move(ids));
  return inner_->Execute(batch, out);
}

RoutingDiff CompareRouting(const std::vector<std::vector<int>>& a, const std::vector<std::vector<int>>& b, int slots) {
  RoutingDiff d;
  for (size_t c = 0; c < std::min(a.size(), b.size()); ++c) {
    for (size_t t = 0; t * slots < std::min(a[c].size(), b[c].size()); ++t) {
      ++d.tokens;
      std::vector<int> x(a[c].begin() + t * slots, a[c].begin() + (t + 1) * slots),
          y(b[c].begin() + t * slots, b[c].begin() + (t + 1) * slots);
      std::sort(x.begin(), x.end());
      std::sort(y.begin(), y.end());
      if (x == y) continue;
      ++d.differing;
      if (d.call < 0) d.call = static_cast<int>(c), d.row = static_cast<int>(t);
      if (d.first_row < 0 || static_cast<int>(t) < d.first_row) d.first_row = static_cast<int>(t);
    }
  }
  return d;
}

}  // namespace moemesh
