#ifndef MOEMESH_CORE_KERNELS_CUDA_PAGED_KV_CUH_
#define MOEMESH_CORE_KERNELS_CUDA_PAGED_KV_CUH_

// For .cu files only: how the flash kernels find a key's K and V rows in
// the paged cache and copy them into shared memory.

#include <cstddef>
#include <cstdint>

#include "core/kernels/cuda/attention.h"
#include "core/kernels/cuda/cp_async.cuh"

namespace moemesh {

// log2 of the cache's block size, or -1 when it is not a power of two:
// the kernels then divide (a division by a variable is dozens of
// instructions a key).
inline int BlockLog2(int block_size) {
  return block_size > 0 && (block_size & (block_size - 1)) == 0 ? __builtin_ctz(block_size) : -1;
}

// One 16-byte piece of key `key`'s K and V rows (columns k_col and v_col
// of the cache rows, in elements) to kd and vd through cp.async, or zeros
// where !ok (key must still be one the sequence holds). The sequence's
// pages start at entry page0 of the cache's block tables.
__device__ inline void CopyKvPiece(const CudaKvPages& kv, int page0, int block_log2, int key, size_t k_col,
                                   size_t v_col, bool ok, uint16_t* kd, uint16_t* vd) {
  const int page = block_log2 >= 0 ? key >> block_log2 : key / kv.block_size;
  const int within = key - page * kv.block_size;
  const uint16_t* kr =
      static_cast<const uint16_t*>(kv.k_blocks[page0 + page]) + static_cast<size_t>(within) * kv.k_stride + k_col;
  const uint16_t* vr =
      static_cast<const uint16_t*>(kv.v_blocks[page0 + page]) + static_cast<size_t>(within) * kv.v_stride + v_col;
  CpAsync16<false>(kd, kr, ok);
  CpAsync16<false>(vd, vr, ok);
}

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_PAGED_KV_CUH_
