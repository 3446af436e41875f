#ifndef MOEMESH_CORE_KERNELS_CUDA_GATING_H_
#define MOEMESH_CORE_KERNELS_CUDA_GATING_H_

#include "absl/status/status.h"
#include "core/kernels/cpu/gating.h"
#include "core/kernels/cuda/cuda_runtime_util.h"

namespace moemesh {

// RouteTokens on the GPU: the same routing (softmax top-k; sigmoid with
// score bias and group-limited top-k; normalisation, scaling, and the
// temperature and dynamic-k extensions) with the same tie-breaking, for `n`
// tokens' router logits [n, num_experts]: RouteToken
// (core/kernels/cpu/gating_rule.h), one warp per token. `logits`,
// `expert_ids`, `weights` and `p.score_bias` are device pointers. With
// `counts` (device, [num_experts]), counts[e] += the routes to expert e as
// well, in the same launch (the scheduler's expert-load figures).
// INVALID_ARGUMENT beyond kMaxGatingExperts experts or kMaxGatingGroups groups.
absl::Status RouteTokensCuda(const GatingParams& p, const float* logits, int n, int* expert_ids, float* weights,
                             CudaStream stream, int* counts = nullptr);

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_GATING_H_
