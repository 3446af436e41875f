#ifndef MOEMESH_CORE_KERNELS_CUDA_EXPERT_GROUPS_H_
#define MOEMESH_CORE_KERNELS_CUDA_EXPERT_GROUPS_H_

#include "absl/status/status.h"
#include "core/kernels/cpu/gating_rule.h"
#include "core/kernels/cuda/cuda_runtime_util.h"

namespace moemesh {

struct ExpertFfnGroup;

// One MoE layer's routing grouped by expert on the GPU, in the layout the
// host's GroupByExpert and CombineTable make (core/experts/expert_work.h):
// groups in increasing expert id, rows in token order within a group, and
// each token's rows to add in increasing expert id. Nothing waits on the
// host, so a decode step needs no round trip per layer.
//
// Inputs (device): `expert_ids` and `weights` [tokens, slots] as
// RouteTokensCuda writes them (-1 for an empty slot; ids outside
// [0, num_experts) count as empty; a token names an expert at most once, as
// the routing rule guarantees and GroupByExpert checks), and `experts`
// [num_experts], each expert's weights (rows ignored).
// Outputs (device): `groups` [num_experts] (the weights, row_offset and
// num_rows), `gather` [tokens * slots] (each output row's token; 0 past the
// last row), `row_weight` [tokens * slots] (0 past the last row),
// `combine_offsets` [tokens + 1] and `combine_index` [tokens * slots]
// (CombineRowsCuda's table).
struct DeviceExpertGroups {
  ExpertFfnGroup* groups = nullptr;
  int* gather = nullptr;
  float* row_weight = nullptr;
  int* combine_offsets = nullptr;
  int* combine_index = nullptr;
};
// INVALID_ARGUMENT beyond kMaxDeviceGroupedRoutes routes or
// kMaxGatingExperts experts.
absl::Status GroupExpertsCuda(const int* expert_ids, const float* weights, int tokens, int slots, int num_experts,
                              const ExpertFfnGroup* experts, const DeviceExpertGroups& out, CudaStream stream);

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_EXPERT_GROUPS_H_
