#include "core/kernels/cuda/gating.h"

#include "core/kernels/cpu/gating_rule.h"
#include "core/kernels/cuda/cuda_check.cuh"

namespace moemesh {
namespace {

constexpr int kWarpsPerBlock = 4;

// A warp as RouteToken's team: lanes split the experts, shuffles reduce.
struct WarpTeam {
  int lane_;
  __device__ int lane() const { return lane_; }
  __device__ int size() const { return 32; }
  __device__ float Max(float v) const {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(~0u, v, o));
    return v;
  }
  __device__ double Sum(double v) const {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(~0u, v, o);
    return v;
  }
  // A butterfly, so every lane ends with the same winner: (value, index)
  // ordered by value, then lower index, is a total order.
  __device__ void Best(float* value, int* index) const {
    for (int o = 16; o > 0; o >>= 1) {
      const float v = __shfl_xor_sync(~0u, *value, o);
      const int i = __shfl_xor_sync(~0u, *index, o);
      if (i >= 0 && (*index < 0 || v > *value || (v == *value && i < *index))) *value = v, *index = i;
    }
  }
  __device__ void Sync() const { __syncwarp(); }
};

// One warp per token, each running the rule the CPU runs; then its lane 0
// counts the token's routes where asked.
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    RouteKernel(GatingParams p, const float* __restrict__ logits, int n, int* __restrict__ ids_out,
                float* __restrict__ w_out, int* __restrict__ counts) {
  __shared__ GatingScratch scratch[kWarpsPerBlock];
  const int warp = threadIdx.x / 32;
  const int t = blockIdx.x * kWarpsPerBlock + warp;
  if (t >= n) return;  // the whole warp leaves together
  const int slots = p.dynamic_k_max > 0 ? p.dynamic_k_max : p.top_k;  // SlotsPerToken is host-only
  int* ids = ids_out + static_cast<size_t>(t) * slots;
  RouteToken(WarpTeam{static_cast<int>(threadIdx.x % 32)}, p, logits + static_cast<size_t>(t) * p.num_experts, ids,
             w_out + static_cast<size_t>(t) * slots, &scratch[warp]);
  if (counts == nullptr) return;
  __syncwarp();  // RouteToken's writes (lane 0's) done
  if (threadIdx.x % 32 != 0) return;
  for (int s = 0; s < slots; ++s) {
    if (ids[s] >= 0 && ids[s] < p.num_experts) atomicAdd(&counts[ids[s]], 1);
  }
}

}  // namespace

absl::Status RouteTokensCuda(const GatingParams& p, const float* logits, int n, int* expert_ids, float* weights,
                             CudaStream stream, int* counts) {
  if (absl::Status st = CheckGatingParams(p); !st.ok()) return st;
  if (n == 0) return absl::OkStatus();
  RouteKernel<<<(n + kWarpsPerBlock - 1) / kWarpsPerBlock, kWarpsPerBlock * 32, 0,
                static_cast<cudaStream_t>(stream)>>>(p, logits, n, expert_ids, weights, counts);
  return LaunchStatus("RouteKernel");
}

}  // namespace moemesh
