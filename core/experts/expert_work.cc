#include "core/experts/expert_work.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/experts/expert_executor.h"

namespace moemesh {

size_t ExpertWork::total_rows() const {
  size_t n = 0;
  for (const Group& g : groups) n += g.rows.size();
  return n;
}

absl::Status GroupByExpert(const ExpertBatch& b, int num_experts, ExpertWork* work) {
  work->layer = b.layer;
  work->num_rows = b.num_tokens;
  work->hidden_size = b.hidden_size;
  work->hidden_states = b.hidden_states;
  work->on_device = b.on_device;
  work->cuda_stream = b.cuda_stream;
  work->groups.clear();
  // Counting sort by expert: group sizes, then rows in token order.
  std::vector<int> count(num_experts, 0);
  const size_t picks = static_cast<size_t>(b.num_tokens) * b.slots;
  for (size_t i = 0; i < picks; ++i) {
    const int e = b.expert_ids[i];
    if (e < -1 || e >= num_experts) {
      return absl::InvalidArgumentError(absl::StrCat("token ", i / b.slots, " of layer ", b.layer,
                                                     " is routed to expert ", e, ", outside [0, ", num_experts, ")"));
    }
    if (e >= 0) ++count[e];
  }
  std::vector<int> group_of(num_experts, -1);
  for (int e = 0; e < num_experts; ++e) {
    if (count[e] == 0) continue;
    group_of[e] = static_cast<int>(work->groups.size());
    ExpertWork::Group& g = work->groups.emplace_back();
    g.expert = e;
    g.rows.reserve(count[e]);
    g.weights.reserve(count[e]);
  }
  for (int t = 0; t < b.num_tokens; ++t) {
    for (int j = 0; j < b.slots; ++j) {
      const int e = b.expert_ids[t * b.slots + j];
      if (e < 0) continue;
      ExpertWork::Group& g = work->groups[group_of[e]];
      if (!g.rows.empty() && g.rows.back() == t) {
        return absl::InvalidArgumentError(
            absl::StrCat("token ", t, " of layer ", b.layer, " is routed to expert ", e, " twice"));
      }
      g.rows.push_back(t);
      g.weights.push_back(b.weights[t * b.slots + j]);
    }
  }
  return absl::OkStatus();
}

void CombineExpertRows(const ExpertWork& work, absl::Span<const float* const> group_rows, int num_tokens,
                       float* out) {
  const size_t h = work.hidden_size;
  std::fill(out, out + static_cast<size_t>(num_tokens) * h, 0.0f);
  for (size_t gi = 0; gi < work.groups.size(); ++gi) {
    const ExpertWork::Group& g = work.groups[gi];
    const float* r = group_rows[gi];
    for (int token : g.rows) {
      float* o = out + static_cast<size_t>(token) * h;
      for (size_t d = 0; d < h; ++d) o[d] += r[d];
      r += h;
    }
  }
}

void CombineExpertRows(const ExpertWork& work, const float* rows, int num_tokens, float* out) {
  std::vector<const float*> group_rows;
  group_rows.reserve(work.groups.size());
  for (const ExpertWork::Group& g : work.groups) {
    group_rows.push_back(rows);
    rows += g.rows.size() * static_cast<size_t>(work.hidden_size);
  }
  CombineExpertRows(work, group_rows, num_tokens, out);
}

void CombineTable(const ExpertWork& work, int num_tokens, std::vector<int>* row_offsets,
                  std::vector<int>* row_index) {
  row_offsets->assign(num_tokens + 1, 0);
  for (const ExpertWork::Group& g : work.groups) {
    for (int token : g.rows) ++(*row_offsets)[token + 1];
  }
  for (int t = 0; t < num_tokens; ++t) (*row_offsets)[t + 1] += (*row_offsets)[t];
  row_index->resize(row_offsets->back());
  std::vector<int> next(row_offsets->begin(), row_offsets->end() - 1);
  int row = 0;
  for (const ExpertWork::Group& g : work.groups) {
    for (int token : g.rows) (*row_index)[next[token]++] = row++;
  }
}

}  // namespace moemesh
