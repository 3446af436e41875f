#ifndef MOEMESH_CORE_KERNELS_CUDA_KV_NARROW_CUH_
#define MOEMESH_CORE_KERNELS_CUDA_KV_NARROW_CUH_

// For .cu files only: an element of the KV cache from fp32, as KvStore
// (dense.h) says.

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>

namespace moemesh {

// `inv_scale`: FP8's 1 / scale.
template <typename T>
__device__ inline T Narrow(float x, float inv_scale);
template <>
__device__ inline float Narrow<float>(float x, float) {
  return x;
}
template <>
__device__ inline uint16_t Narrow<uint16_t>(float x, float) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}
template <>
__device__ inline uint8_t Narrow<uint8_t>(float x, float inv_scale) {
  return __nv_cvt_float_to_fp8(x * inv_scale, __NV_SATFINITE, __NV_E4M3);
}

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_KV_NARROW_CUH_
