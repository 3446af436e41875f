#include "core/kernels/cuda/rope.h"

#include <algorithm>

#include "core/kernels/cuda/cuda_check.cuh"
#include "core/kernels/cuda/rope.cuh"

namespace moemesh {
namespace {

// One block per (token, head); one thread per rotated pair.
__global__ void RopeKernel(const float* __restrict__ inv_freq, float scaling, int dim, bool interleaved,
                           const int* __restrict__ positions, int token_stride, int head_stride,
                           float* __restrict__ x) {
  const int t = blockIdx.x, h = blockIdx.y;
  extern __shared__ float tmp[];
  RotateHead(inv_freq, scaling, dim, interleaved, static_cast<float>(positions[t]),
             x + static_cast<size_t>(t) * token_stride + static_cast<size_t>(h) * head_stride, tmp);
}

}  // namespace

absl::Status RopeCuda(const float* inv_freq, float attention_scaling, int dim, bool interleaved,
                      const int* positions, int tokens, int num_heads, int token_stride, int head_stride, float* x,
                      CudaStream stream) {
  if (dim <= 0 || dim % 2 != 0 || dim > 8192) return absl::InvalidArgumentError("RopeCuda: dim must be even, <= 8192");
  if (tokens < 0 || num_heads < 0) return absl::InvalidArgumentError("RopeCuda: negative sizes");
  if (tokens == 0 || num_heads == 0) return absl::OkStatus();
  const int threads = std::min(256, ((dim / 2 + 31) / 32) * 32);
  RopeKernel<<<dim3(tokens, num_heads), threads, dim * sizeof(float), static_cast<cudaStream_t>(stream)>>>(
      inv_freq, attention_scaling, dim, interleaved, positions, token_stride, head_stride, x);
  return LaunchStatus("RopeKernel");
}

}  // namespace moemesh
