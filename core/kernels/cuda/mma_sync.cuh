#ifndef MOEMESH_CORE_KERNELS_CUDA_MMA_SYNC_CUH_
#define MOEMESH_CORE_KERNELS_CUDA_MMA_SYNC_CUH_

// For .cu files only: warp-level tensor-core primitives (sm_80+). Fragment
// layouts are PTX's for mma.sync m16n8k8 / m16n8k16 (row-major A, column-
// major B): lane (g = lane / 4, t = lane % 4) holds, of the 16 x 8 sums,
// rows g and g + 8 of columns 2t and 2t + 1.

#include <cuda_bf16.h>

namespace moemesh {

// c += a . b in TF32 (10-bit mantissas, fp32 sums), m16n8k8.
__device__ inline void MmaTf32(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// c += a . b in bf16 (fp32 sums), m16n8k16.
__device__ inline void MmaBf16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// A float rounded to TF32 (nearest, ties away), for MmaTf32.
__device__ inline unsigned ToTf32(float v) {
  unsigned r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
  return r;
}

// Two floats as bf16 (nearest even), the first in the low half: an A or
// B register of MmaBf16.
__device__ inline unsigned PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const unsigned*>(&v);
}

__device__ inline unsigned SharedAddress(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// Four 8 x 8 matrices of 16-bit elements from shared memory: lanes 8i ..
// 8i + 7 give the addresses of matrix i's rows (16 bytes each); each
// thread gets, of each, row lane / 4 at columns 2 (lane % 4) and + 1, or
// with Trans rows 2 (lane % 4) and + 1 of column lane / 4.
__device__ inline void LdMatrixX4(unsigned (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SharedAddress(p)));
}
__device__ inline void LdMatrixX4Trans(unsigned (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SharedAddress(p)));
}

// The maximum and the sum over the four lanes of a quad (lanes 4g .. 4g +
// 3), which hold one row of an mma fragment.
__device__ inline float QuadMax(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ inline float QuadSum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_MMA_SYNC_CUH_
