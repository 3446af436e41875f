#include "core/kernels/cuda/attention.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/kernels/cuda/cuda_check.cuh"

namespace moemesh {
namespace {

constexpr int kWarps = 4;

// kPerLane: output channels per lane, so heads up to 32 * kPerLane wide;
// instantiated for a few sizes so that small heads keep few registers.
template <int kPerLane>
__global__ void AttentionKernel(AttentionShape s, const float* __restrict__ q, int first_pos, KvPages kv,
                                float* __restrict__ out) {
  const int i = blockIdx.x, h = blockIdx.y;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int kvh = h / (s.num_heads / s.num_kv_heads);
  const int pos = first_pos + i;
  const int lo = s.sliding_window > 0 ? max(0, pos - s.sliding_window + 1) : 0;

  __shared__ float qs[32 * kPerLane];
  __shared__ float wm[kWarps], wl[kWarps];
  __shared__ float wacc[kWarps][32 * kPerLane];
  const float* qv = q + (static_cast<size_t>(i) * s.num_heads + h) * s.head_dim;
  for (int d = threadIdx.x; d < s.head_dim; d += blockDim.x) qs[d] = qv[d];
  __syncthreads();

  float m = -INFINITY, l = 0.f, acc[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) acc[j] = 0.f;
  for (int t = lo + warp; t <= pos; t += kWarps) {
    const float* k = kv.k_blocks[t / kv.block_size] + static_cast<size_t>(t % kv.block_size) * kv.k_stride +
                     kv.k_offset + static_cast<size_t>(kvh) * s.head_dim;
    float dot = 0.f;
    for (int d = lane; d < s.head_dim; d += 32) dot += qs[d] * k[d];
    for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
    const float score = dot * s.scale;
    const float m_new = fmaxf(m, score);
    const float corr = expf(m - m_new), p = expf(score - m_new);
    l = l * corr + p;
    const float* v = kv.v_blocks[t / kv.block_size] + static_cast<size_t>(t % kv.block_size) * kv.v_stride +
                     kv.v_offset + static_cast<size_t>(kvh) * s.v_head_dim;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int d = lane + 32 * j;
      if (d < s.v_head_dim) acc[j] = acc[j] * corr + p * v[d];
    }
    m = m_new;
  }
  if (lane == 0) {
    wm[warp] = m;
    wl[warp] = l;
  }
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int d = lane + 32 * j;
    if (d < s.v_head_dim) wacc[warp][d] = acc[j];
  }
  __syncthreads();
  // Merge the warps' partial softmaxes (a warp with no keys has m = -inf).
  float mx = -INFINITY;
  for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, wm[w]);
  float denom = 0.f;
  for (int w = 0; w < kWarps; ++w) denom += wm[w] == -INFINITY ? 0.f : wl[w] * expf(wm[w] - mx);
  float* o = out + (static_cast<size_t>(i) * s.num_heads + h) * s.v_head_dim;
  for (int d = threadIdx.x; d < s.v_head_dim; d += blockDim.x) {
    float num = 0.f;
    for (int w = 0; w < kWarps; ++w) {
      if (wm[w] != -INFINITY) num += wacc[w][d] * expf(wm[w] - mx);
    }
    o[d] = num / denom;
  }
}

}  // namespace

absl::Status CausalAttentionCuda(const AttentionShape& s, const float* q, int n, int first_pos, const KvPages& kv,
                                 float* out, CudaStream stream) {
  if (s.num_heads <= 0 || s.num_kv_heads <= 0 || s.num_heads % s.num_kv_heads != 0) {
    return absl::InvalidArgumentError("CausalAttentionCuda: num_kv_heads must divide num_heads");
  }
  if (s.head_dim <= 0 || s.head_dim > kMaxAttentionHeadDim || s.v_head_dim <= 0 ||
      s.v_head_dim > kMaxAttentionHeadDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("CausalAttentionCuda: head sizes must be in [1, ", kMaxAttentionHeadDim, "]"));
  }
  if (n < 0 || first_pos < 0 || kv.block_size <= 0) return absl::InvalidArgumentError("CausalAttentionCuda: bad sizes");
  if (n == 0) return absl::OkStatus();
  const dim3 grid(n, s.num_heads);
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  const int widest = std::max(s.head_dim, s.v_head_dim);
  if (widest <= 128) {
    AttentionKernel<4><<<grid, 32 * kWarps, 0, st>>>(s, q, first_pos, kv, out);
  } else if (widest <= 256) {
    AttentionKernel<8><<<grid, 32 * kWarps, 0, st>>>(s, q, first_pos, kv, out);
  } else {
    static_assert(kMaxAttentionHeadDim == 32 * 20, "the widest instantiation");
    AttentionKernel<20><<<grid, 32 * kWarps, 0, st>>>(s, q, first_pos, kv, out);
  }
  return LaunchStatus("AttentionKernel");
}

}  // namespace moemesh
