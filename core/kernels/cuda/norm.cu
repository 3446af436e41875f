#include "core/kernels/cuda/norm.h"

#include "core/kernels/cuda/cuda_check.cuh"

namespace moemesh {
namespace {

constexpr int kThreads = 256;

// One block per row. With `delta`, the row is x + delta first (written back
// to x), as an Add before the norm would leave it.
__global__ void RmsNormKernel(float* x, const float* __restrict__ delta, const float* __restrict__ w, int n,
                              float eps, float* y) {
  float* xr = x + static_cast<size_t>(blockIdx.x) * n;
  float* yr = y + static_cast<size_t>(blockIdx.x) * n;
  float sum = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    float v = xr[i];
    if (delta != nullptr) {
      v += delta[static_cast<size_t>(blockIdx.x) * n + i];
      xr[i] = v;
    }
    sum += v * v;
  }
  // Warp sums, then the block's.
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  __shared__ float warp_sums[kThreads / 32];
  __shared__ float scale;
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.f;
    for (int i = 0; i < kThreads / 32; ++i) t += warp_sums[i];
    scale = rsqrtf(t / n + eps);
  }
  __syncthreads();
  // Each thread reads back only what it wrote itself.
  for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = w[i] * (xr[i] * scale);
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
