#include "core/kernels/cuda/expert_ffn.h"

#include <cuda_bf16.h>

#include "core/kernels/cuda/cuda_check.cuh"

namespace moemesh {
namespace {

// Few rows per expert during decode, so both matrix products are warp-wide
// dot products: one warp per output neuron reads that weight row once and
// applies it to up to kRows rows of the group held in registers. The
// weights are the bytes to move; this reads each once per kRows rows.
constexpr int kRows = 8;
constexpr int kWarpsPerBlock = 8;

__device__ inline float Bf16(uint16_t v) { return __uint_as_float(static_cast<uint32_t>(v) << 16); }

__device__ inline float WarpSum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// 8 bf16 weights from one 16-byte load.
__device__ inline void Unpack8(const uint4& v, float* f) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

// sum over k of w[k] * a[k] for up to kRows rows a_r, accumulated into
// acc[r]: one lane's share of a warp-wide dot product. With Vec (length a
// multiple of 8) each lane takes 8 weights per 16-byte load; otherwise one.
template <bool Vec>
__device__ inline void DotRows(const uint16_t* __restrict__ w, const float* __restrict__ a, size_t a_stride, int len,
                               int nr, int lane, float* acc) {
  if (Vec) {
    const uint4* w8 = reinterpret_cast<const uint4*>(w);
    for (int k8 = lane; k8 < len / 8; k8 += 32) {
      float wf[8];
      Unpack8(w8[k8], wf);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (r < nr) {
          const float4* ap = reinterpret_cast<const float4*>(a + r * a_stride) + 2 * k8;
          const float4 p = ap[0], q = ap[1];
          acc[r] += wf[0] * p.x + wf[1] * p.y + wf[2] * p.z + wf[3] * p.w + wf[4] * q.x + wf[5] * q.y +
                    wf[6] * q.z + wf[7] * q.w;
        }
      }
    }
  } else {
    for (int k = lane; k < len; k += 32) {
      const float wk = Bf16(w[k]);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (r < nr) acc[r] += wk * a[r * a_stride + k];
      }
    }
  }
}

// act[r, j] = silu(gate_j . x_r) * (up_j . x_r) for the rows of group
// blockIdx.y, neuron j = one per warp.
template <bool Vec>
__global__ void GateUpKernel(const ExpertFfnGroup* __restrict__ groups, const float* __restrict__ x, int hidden,
                             int intermediate, float* __restrict__ act) {
  const ExpertFfnGroup g = groups[blockIdx.y];
  const int lane = threadIdx.x & 31;
  const int j = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (j >= intermediate || g.num_rows == 0) return;
  const uint16_t* gw = g.gate + static_cast<size_t>(j) * hidden;
  const uint16_t* uw = g.up + static_cast<size_t>(j) * hidden;
  for (int r0 = 0; r0 < g.num_rows; r0 += kRows) {
    const int nr = min(kRows, g.num_rows - r0);
    const float* xr = x + static_cast<size_t>(g.row_offset + r0) * hidden;
    float ag[kRows] = {}, au[kRows] = {};
    DotRows<Vec>(gw, xr, hidden, hidden, nr, lane, ag);
    DotRows<Vec>(uw, xr, hidden, hidden, nr, lane, au);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float sg = WarpSum(ag[r]), su = WarpSum(au[r]);
      if (lane == 0 && r < nr) {
        act[static_cast<size_t>(g.row_offset + r0 + r) * intermediate + j] = sg / (1.f + __expf(-sg)) * su;
      }
    }
  }
}

// out[r, d] = row_weight[r] * (down_d . act_r), output column d per warp.
template <bool Vec>
__global__ void DownKernel(const ExpertFfnGroup* __restrict__ groups, const float* __restrict__ act,
                           const float* __restrict__ row_weight, int hidden, int intermediate,
                           float* __restrict__ out) {
  const ExpertFfnGroup g = groups[blockIdx.y];
  const int lane = threadIdx.x & 31;
  const int d = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (d >= hidden || g.num_rows == 0) return;
  const uint16_t* dw = g.down + static_cast<size_t>(d) * intermediate;
  for (int r0 = 0; r0 < g.num_rows; r0 += kRows) {
    const int nr = min(kRows, g.num_rows - r0);
    float acc[kRows] = {};
    DotRows<Vec>(dw, act + static_cast<size_t>(g.row_offset + r0) * intermediate, intermediate, intermediate, nr,
                 lane, acc);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float s = WarpSum(acc[r]);
      if (lane == 0 && r < nr) {
        const size_t row = static_cast<size_t>(g.row_offset + r0 + r);
        out[row * hidden + d] = row_weight[row] * s;
      }
    }
  }
}

}  // namespace

absl::Status ExpertFfnCuda(const float* x, const float* row_weight, const std::vector<ExpertFfnGroup>& groups,
                           int hidden, int intermediate, float* act, float* out, CudaStream stream) {
  if (hidden <= 0 || intermediate <= 0) {
    return absl::InvalidArgumentError("ExpertFfnCuda: hidden and intermediate sizes must be positive");
  }
  for (const ExpertFfnGroup& g : groups) {
    if (g.num_rows < 0 || g.row_offset < 0) return absl::InvalidArgumentError("ExpertFfnCuda: bad group rows");
    if (g.num_rows > 0 && (g.gate == nullptr || g.up == nullptr || g.down == nullptr)) {
      return absl::InvalidArgumentError("ExpertFfnCuda: a group with rows has no weights");
    }
  }
  if (groups.empty()) return absl::OkStatus();
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  ExpertFfnGroup* table = nullptr;
  const size_t bytes = groups.size() * sizeof(ExpertFfnGroup);
  if (absl::Status st = CudaStatus(cudaMallocAsync(reinterpret_cast<void**>(&table), bytes, s), "cudaMallocAsync");
      !st.ok()) {
    return st;
  }
  absl::Status st = CudaStatus(cudaMemcpyAsync(table, groups.data(), bytes, cudaMemcpyHostToDevice, s),
                               "cudaMemcpyAsync");
  if (st.ok()) {
    const dim3 block(32 * kWarpsPerBlock);
    const dim3 gate_grid((intermediate + kWarpsPerBlock - 1) / kWarpsPerBlock, static_cast<unsigned>(groups.size()));
    // 16-byte loads need rows of a multiple of 8 elements (and aligned bases,
    // which cudaMalloc gives).
    if (hidden % 8 == 0) {
      GateUpKernel<true><<<gate_grid, block, 0, s>>>(table, x, hidden, intermediate, act);
    } else {
      GateUpKernel<false><<<gate_grid, block, 0, s>>>(table, x, hidden, intermediate, act);
    }
    st.Update(LaunchStatus("GateUpKernel"));
  }
  if (st.ok()) {
    const dim3 block(32 * kWarpsPerBlock);
    const dim3 down_grid((hidden + kWarpsPerBlock - 1) / kWarpsPerBlock, static_cast<unsigned>(groups.size()));
    if (intermediate % 8 == 0) {
      DownKernel<true><<<down_grid, block, 0, s>>>(table, act, row_weight, hidden, intermediate, out);
    } else {
      DownKernel<false><<<down_grid, block, 0, s>>>(table, act, row_weight, hidden, intermediate, out);
    }
    st.Update(LaunchStatus("DownKernel"));
  }
  // Stream-ordered: freed after the kernels have read it. (A copy from
  // pageable host memory has been staged by the time cudaMemcpyAsync
  // returns, so `groups` need not outlive this call.)
  cudaFreeAsync(table, s);
  return st;
}

}  // namespace moemesh
