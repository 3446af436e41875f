#include "core/kernels/cuda/norm.h"

#include "core/kernels/cuda/block_reduce.cuh"
#include "core/kernels/cuda/cuda_check.cuh"

namespace moemesh {
namespace {

constexpr int kThreads = 256;

// Floats a thread holds in registers: rows of up to kThreads * kHeld
// floats (hidden sizes up to 8,192) are read once, all loads in flight
// together; a loop that loaded, added and stored one element at a time
// waited for each load in turn (a one-row norm took 9 us on an H100).
constexpr int kHeld = 32;

// One block per row. With `delta`, the row is x + delta first (written back
// to x), as an Add before the norm would leave it. Either way thread t sums
// the squares of elements t, t + kThreads, ... in that order.
__global__ void __launch_bounds__(kThreads)
    RmsNormKernel(float* x, const float* __restrict__ delta, const float* __restrict__ w, int n, float eps,
                  float* y) {
  float* xr = x + static_cast<size_t>(blockIdx.x) * n;
  float* yr = y + static_cast<size_t>(blockIdx.x) * n;
  const float* dr = delta != nullptr ? delta + static_cast<size_t>(blockIdx.x) * n : nullptr;
  const bool held = n <= kThreads * kHeld;
  float v[kHeld];
  float sum = 0.f;
  if (held) {
#pragma unroll
    for (int j = 0; j < kHeld; ++j) {
      const int i = threadIdx.x + j * kThreads;
      v[j] = i < n ? xr[i] : 0.f;
    }
    if (dr != nullptr) {
#pragma unroll
      for (int j = 0; j < kHeld; ++j) {
        const int i = threadIdx.x + j * kThreads;
        if (i < n) v[j] += dr[i];
      }
#pragma unroll
      for (int j = 0; j < kHeld; ++j) {
        const int i = threadIdx.x + j * kThreads;
        if (i < n) xr[i] = v[j];
      }
    }
#pragma unroll
    for (int j = 0; j < kHeld; ++j) sum += v[j] * v[j];  // zeros past n add nothing
  } else {
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      float e = xr[i];
      if (dr != nullptr) {
        e += dr[i];
        xr[i] = e;
      }
      sum += e * e;
    }
  }
  const float scale = BlockRmsScale<kThreads>(sum, n, eps);
  if (held) {
#pragma unroll
    for (int j = 0; j < kHeld; ++j) {
      const int i = threadIdx.x + j * kThreads;
      if (i < n) yr[i] = w[i] * (v[j] * scale);
    }
  } else {
    // Each thread reads back only what it wrote itself.
    for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = w[i] * (xr[i] * scale);
  }
}

absl::Status Launch(float* x, const float* delta, const float* weight, int rows, int n, float eps, float* y,
                    CudaStream stream) {
  if (rows < 0 || n <= 0) return absl::InvalidArgumentError("RmsNormCuda: need rows >= 0 and n > 0");
  if (rows == 0) return absl::OkStatus();
  RmsNormKernel<<<rows, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(x, delta, weight, n, eps, y);
  return LaunchStatus("RmsNormKernel");
}

}  // namespace

absl::Status RmsNormCuda(const float* x, const float* weight, int rows, int n, float eps, float* y,
                         CudaStream stream) {
  // Without delta the kernel only reads x.
  return Launch(const_cast<float*>(x), nullptr, weight, rows, n, eps, y, stream);
}

absl::Status AddRmsNormCuda(float* hidden, const float* delta, const float* weight, int rows, int n, float eps,
                            float* y, CudaStream stream) {
  return Launch(hidden, delta, weight, rows, n, eps, y, stream);
}

}  // namespace moemesh
