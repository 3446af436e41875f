#include "core/kernels/cuda/gating.h"

#include "core/kernels/cpu/gating_rule.h"
#include "core/kernels/cuda/cuda_check.cuh"

namespace moemesh {
namespace {

// One thread per token, each running the rule the CPU runs.
__global__ void RouteKernel(GatingParams p, const float* __restrict__ logits, int n, int* __restrict__ ids_out,
                            float* __restrict__ w_out) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= n) return;
  const int slots = p.dynamic_k_max > 0 ? p.dynamic_k_max : p.top_k;  // SlotsPerToken is host-only
  RouteToken(p, logits + static_cast<size_t>(t) * p.num_experts, ids_out + static_cast<size_t>(t) * slots,
             w_out + static_cast<size_t>(t) * slots);
}

}  // namespace

absl::Status RouteTokensCuda(const GatingParams& p, const float* logits, int n, int* expert_ids, float* weights,
                             CudaStream stream) {
  if (absl::Status st = CheckGatingParams(p); !st.ok()) return st;
  if (n == 0) return absl::OkStatus();
  constexpr int kThreads = 64;
  RouteKernel<<<(n + kThreads - 1) / kThreads, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      p, logits, n, expert_ids, weights);
  return LaunchStatus("RouteKernel");
}

}  // namespace moemesh
