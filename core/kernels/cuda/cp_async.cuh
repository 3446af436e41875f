#ifndef MOEMESH_CORE_KERNELS_CUDA_CP_ASYNC_CUH_
#define MOEMESH_CORE_KERNELS_CUDA_CP_ASYNC_CUH_

// For .cu files only: asynchronous global-to-shared copies (sm_80+). A
// thread may read what others copied only after CpAsyncWait and a barrier.

#include <cuda_runtime.h>

namespace moemesh {

// 16 bytes from global to shared memory, or zeros when !ok (gmem must still
// be a readable address). Prefetch: also bring the surrounding 256 bytes
// into L2.
template <bool kPrefetch>
__device__ inline void CpAsync16(void* smem, const void* gmem, bool ok) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  if constexpr (kPrefetch) {
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(ok ? 16 : 0));
  } else {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(ok ? 16 : 0));
  }
}

// 4 bytes, for rows that are not 16-byte aligned.
__device__ inline void CpAsync4(void* smem, const void* gmem) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(gmem));
}

__device__ inline void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most N of this thread's committed groups are in flight.
template <int N>
__device__ inline void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Two tiles in flight: before tile `tile` of `tiles`, starts the next
// tile's copy (`load(tile + 1)`, one committed group), waits for this
// one's and makes it visible to the block.
template <typename Load>
__device__ inline void AwaitKvTile(int tile, int tiles, const Load& load) {
  if (tile + 1 < tiles) {
    load(tile + 1);
    CpAsyncWait<1>();
  } else {
    CpAsyncWait<0>();
  }
  __syncthreads();
}

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_CP_ASYNC_CUH_
