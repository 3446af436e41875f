#ifndef MOEMESH_CORE_KERNELS_CUDA_BLOCK_REDUCE_CUH_
#define MOEMESH_CORE_KERNELS_CUDA_BLOCK_REDUCE_CUH_

namespace moemesh {

// RmsNorm's scale, 1 / sqrt(mean of squares + eps), of the `n` values a
// block holds, from each thread's sum of its squares: warps summed by
// shuffles, then the warps' sums in order by thread 0. RmsNormKernel and
// NormRotateCacheKernel both take it, so a row normalized by either has the
// same bits (cuda_kernels_test checks it). Every thread of the block (at
// most kMaxThreads, a multiple of 32) must call it; each gets the scale.
template <int kMaxThreads>
__device__ __forceinline__ float BlockRmsScale(float sum, int n, float eps) {
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  __shared__ float warp_sums[kMaxThreads / 32];
  __shared__ float scale;
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.f;
    for (int i = 0; i < static_cast<int>(blockDim.x) / 32; ++i) t += warp_sums[i];
    scale = rsqrtf(t / n + eps);
  }
  __syncthreads();
  return scale;
}

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_BLOCK_REDUCE_CUH_
