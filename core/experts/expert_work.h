#ifndef MOEMESH_CORE_EXPERTS_EXPERT_WORK_H_
#define MOEMESH_CORE_EXPERTS_EXPERT_WORK_H_

#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace moemesh {

struct ExpertBatch;

// Rows of one MoE layer grouped by expert: what an ExpertDevice computes,
// and what a request to an expert worker carries. The layout every path
// shares (docs/ARCHITECTURE.md, "Expert compute"): groups in increasing
// expert id, one per expert, and output rows in group order, so that a
// combine that walks the groups in order adds each token's experts in
// increasing id order, whichever device or worker computed them.
struct ExpertWork {
  struct Group {
    int expert = 0;
    std::vector<int> rows;       // indices into hidden_states
    std::vector<float> weights;  // one per row
  };
  int layer = 0;
  int num_rows = 0;
  int hidden_size = 0;
  const float* hidden_states = nullptr;  // [num_rows, hidden_size]
  std::vector<Group> groups;
  // Whether hidden_states (and the device's output) are device pointers,
  // ordered on cuda_stream (ExpertBatch::on_device).
  bool on_device = false;
  void* cuda_stream = nullptr;

  // Rows over all groups: the output's rows.
  size_t total_rows() const;
};

// Groups the batch's assignments by expert, in increasing expert id; within
// a group, rows in token order. The work's rows are the batch's tokens
// (hidden_states shared, not copied). INVALID_ARGUMENT for an expert id
// outside [-1, num_experts) or a token sent twice to one expert.
absl::Status GroupByExpert(const ExpertBatch& batch, int num_experts, ExpertWork* work);

// The ordered combine, on the host: out[t] = sum of the output rows of
// token t, in group order (increasing expert id). `group_rows[g]` points at
// group g's output rows ([groups[g].rows.size(), hidden_size]); `out` is
// [num_tokens, hidden_size] and is overwritten (tokens without a row get 0).
void CombineExpertRows(const ExpertWork& work, absl::Span<const float* const> group_rows, int num_tokens,
                       float* out);
// The same, with every group's rows one after another in `rows`.
void CombineExpertRows(const ExpertWork& work, const float* rows, int num_tokens, float* out);

// The combine as a table, for devices that run it themselves: for token t,
// the output rows to add, in order, are row_index[row_offsets[t] ..
// row_offsets[t + 1]) (rows numbered in group order). row_offsets has
// num_tokens + 1 entries.
void CombineTable(const ExpertWork& work, int num_tokens, std::vector<int>* row_offsets,
                  std::vector<int>* row_index);

}  // namespace moemesh

#endif  // MOEMESH_CORE_EXPERTS_EXPERT_WORK_H_
