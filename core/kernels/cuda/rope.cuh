#ifndef MOEMESH_CORE_KERNELS_CUDA_ROPE_CUH_
#define MOEMESH_CORE_KERNELS_CUDA_ROPE_CUH_

// For .cu files only: one head's rotation by the threads of a block, for
// RopeKernel and the kernels that fuse it with what comes around it.

namespace moemesh {

// Rotates the first `dim` channels of the head `v` (global or shared
// memory) at position `pos`, as RopeCuda says; `tmp` is `dim` floats of
// shared memory. The block's threads call it together; it synchronises
// them, and each thread has written back only channels it may read next.
__device__ inline void RotateHead(const float* __restrict__ inv_freq, float scaling, int dim, bool interleaved,
                                  float pos, float* v, float* tmp) {
  const int half = dim / 2;
  // Interleaved input is read whole before any thread writes it back.
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float a_ = pos * inv_freq[i];
    const float c = cosf(a_) * scaling, s = sinf(a_) * scaling;
    const float a = interleaved ? v[2 * i] : v[i];
    const float b = interleaved ? v[2 * i + 1] : v[i + half];
    tmp[i] = a * c - b * s;
    tmp[i + half] = b * c + a * s;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < dim; i += blockDim.x) v[i] = tmp[i];
}

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_ROPE_CUH_
