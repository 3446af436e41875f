#include "core/kernels/cuda/expert_groups.h"

#include "absl/strings/str_cat.h"
#include "core/kernels/cpu/gating_rule.h"
#include "core/kernels/cuda/cuda_check.cuh"
#include "core/kernels/cuda/expert_ffn.h"

namespace moemesh {
namespace {

constexpr int kThreads = 1024;

// One block. The layout follows from counting, so it is the same whatever
// order the threads run in: an expert's rows start after the rows of every
// lower expert, a route's rank within its expert is the number of earlier
// routes to it (a token routes to an expert at most once, so those are
// earlier tokens'), and its place within its token's rows is the number of
// its token's routes to lower experts. The ranks and the tokens' first
// rows are running counts, which one warp keeps in route order, 32 routes
// at a time: linear in the routes (a prefill step's thousands), where a
// thread per route counting the routes before it was quadratic.
__global__ void __launch_bounds__(kThreads)
    GroupExpertsKernel(const int* __restrict__ ids, const float* __restrict__ weights, int tokens, int slots,
                       int num_experts, const ExpertFfnGroup* __restrict__ experts, ExpertFfnGroup* __restrict__ groups,
                       int* __restrict__ gather, float* __restrict__ row_weight, int* __restrict__ offsets,
                       int* __restrict__ index) {
  extern __shared__ int shared[];
  const int routes = tokens * slots;
  int* s_ids = shared;                    // [routes], -1 for none
  int* s_count = s_ids + routes;          // [num_experts]
  int* s_first = s_count + num_experts;   // [num_experts]
  int* s_seen = s_first + num_experts;    // [num_experts]: routes placed so far
  int* s_token = s_seen + num_experts;    // [tokens + 1]: rows before each token
  for (int i = threadIdx.x; i < routes; i += blockDim.x) {
    const int e = ids[i];
    s_ids[i] = e >= 0 && e < num_experts ? e : -1;
    gather[i] = 0;
    row_weight[i] = 0.0f;
  }
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) s_count[e] = s_seen[e] = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < routes; i += blockDim.x) {
    if (s_ids[i] >= 0) atomicAdd(&s_count[s_ids[i]], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    int first = 0;
    for (int j = 0; j < e; ++j) first += s_count[j];
    s_first[e] = first;
    ExpertFfnGroup g = experts[e];
    g.row_offset = first;
    g.num_rows = s_count[e];
    groups[e] = g;
  }
  const int lane = threadIdx.x % 32;
  const unsigned below = (1u << lane) - 1;
  if (threadIdx.x < 32) {  // each token's first row: a scan of the tokens' routes
    int carry = 0;
    for (int base = 0; base <= tokens; base += 32) {
      const int t = base + lane;
      int mine = 0;
      for (int s = 0; t < tokens && s < slots; ++s) mine += s_ids[t * slots + s] >= 0;
      int upto = mine;
      for (int o = 1; o < 32; o <<= 1) {
        const int u = __shfl_up_sync(~0u, upto, o);
        if (lane >= o) upto += u;
      }
      if (t <= tokens) s_token[t] = offsets[t] = carry + upto - mine;
      carry += __shfl_sync(~0u, upto, 31);
    }
  }
  __syncthreads();
  if (threadIdx.x >= 32) return;
  for (int base = 0; base < routes; base += 32) {
    const int i = base + lane;
    const int e = i < routes ? s_ids[i] : -1;
    const unsigned same = __match_any_sync(~0u, e);
    if (e >= 0) {
      const int row = s_first[e] + s_seen[e] + __popc(same & below), t = i / slots;
      gather[row] = t;
      row_weight[row] = weights[i];
      int lower = 0;
      for (int s = 0; s < slots; ++s) {
        const int other = s_ids[t * slots + s];
        lower += other >= 0 && other < e;
      }
      index[s_token[t] + lower] = row;
    }
    __syncwarp();  // every lane has read s_seen
    if (e >= 0 && (same & below) == 0) s_seen[e] += __popc(same);
    __syncwarp();
  }
}

}  // namespace

absl::Status GroupExpertsCuda(const int* expert_ids, const float* weights, int tokens, int slots, int num_experts,
                              const ExpertFfnGroup* experts, const DeviceExpertGroups& out, CudaStream stream) {
  if (tokens < 0 || slots < 1 || num_experts < 1 || num_experts > kMaxGatingExperts) {
    return absl::InvalidArgumentError(absl::StrCat("GroupExpertsCuda: ", tokens, " tokens, ", slots, " slots, ",
                                                   num_experts, " experts (at most ", kMaxGatingExperts, ")"));
  }
  if (static_cast<long long>(tokens) * slots > kMaxDeviceGroupedRoutes) {
    return absl::InvalidArgumentError(absl::StrCat("GroupExpertsCuda: ", tokens, " tokens of ", slots,
                                                   " routes; one call groups at most ", kMaxDeviceGroupedRoutes));
  }
  const size_t shared = (static_cast<size_t>(tokens) * slots + 3 * num_experts + tokens + 1) * sizeof(int);
  GroupExpertsKernel<<<1, kThreads, shared, static_cast<cudaStream_t>(stream)>>>(
      expert_ids, weights, tokens, slots, num_experts, experts, out.groups, out.gather, out.row_weight,
      out.combine_offsets, out.combine_index);
  return LaunchStatus("GroupExpertsKernel");
}

}  // namespace moemesh
