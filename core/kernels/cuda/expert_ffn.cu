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

// act[r, j] = silu(gate_j . x_r) * (up_j . x_r) for the rows of group
// blockIdx.y, neuron j = one per warp.
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
    float ag[kRows] = {}, au[kRows] = {};
    for (int k = lane; k < hidden; k += 32) {
      const float wg = Bf16(gw[k]), wu = Bf16(uw[k]);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (r < nr) {
          const float xv = x[static_cast<size_t>(g.row_offset + r0 + r) * hidden + k];
          ag[r] += wg * xv;
          au[r] += wu * xv;
        }
      }
    }
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
    for (int k = lane; k < intermediate; k += 32) {
      const float w = Bf16(dw[k]);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (r < nr) acc[r] += w * act[static_cast<size_t>(g.row_offset + r0 + r) * intermediate + k];
      }
    }
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
    GateUpKernel<<<gate_grid, block, 0, s>>>(table, x, hidden, intermediate, act);
    st.Update(LaunchStatus("GateUpKernel"));
  }
  if (st.ok()) {
    const dim3 block(32 * kWarpsPerBlock);
    const dim3 down_grid((hidden + kWarpsPerBlock - 1) / kWarpsPerBlock, static_cast<unsigned>(groups.size()));
    DownKernel<<<down_grid, block, 0, s>>>(table, act, row_weight, hidden, intermediate, out);
    st.Update(LaunchStatus("DownKernel"));
  }
  // Stream-ordered: freed after the kernels have read it. (A copy from
  // pageable host memory has been staged by the time cudaMemcpyAsync
  // returns, so `groups` need not outlive this call.)
  cudaFreeAsync(table, s);
  return st;
}

}  // namespace moemesh
