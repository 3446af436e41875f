#ifndef MOEMESH_CORE_KERNELS_CUDA_FLASH_PREFILL_H_
#define MOEMESH_CORE_KERNELS_CUDA_FLASH_PREFILL_H_

#include "absl/status/status.h"
#include "core/kernels/cuda/attention.h"

namespace moemesh {

// Prompt chunks over a bf16 KV cache in FlashAttention-2's layout, for
// CudaPagedAttention: a block takes up to kFlashPrefillRows consecutive
// rows of one sequence and one query head, and walks their keys in tiles
// of 64 read from the paged cache with cp.async, two in flight: scores and
// the weighted values on bf16 tensor cores (mma.sync m16n8k16, fp32 sums),
// the queries and the probabilities rounded to bf16, the softmax online in
// fp32. Each warp takes 16 or 32 of the rows (eight or four warps): with
// 32, each key or value fragment it reads from shared memory feeds two
// products. Tiles past a row's position (causal) or before its window are
// skipped; only those crossing the diagonal or a window's start are
// masked. Within about 1e-2 of fp32 attention over the same cache.
inline constexpr int kFlashPrefillRows = 128;
inline constexpr int kFlashPrefillWarpRows = 32;  // the default (docs/PERFORMANCE.md)

// Whether the kernel takes this call: a bf16 cache of separate K and V
// rows in 16-byte pieces, head sizes equal and one of 16, 32, 64 or 128.
bool FlashPrefillFits(const AttentionShape& s, const PagedRows& rows, const float* q);

// `tiles`: [num_tiles][2] in device memory, each a first row and a count
// (1 .. kFlashPrefillRows) of rows at consecutive positions of one
// sequence. Writes those rows' outputs. `warp_rows`: 16 or 32 rows a warp,
// 0 for kFlashPrefillWarpRows.
absl::Status FlashPrefillCuda(const AttentionShape& s, const float* q, const PagedRows& rows, const int* tiles,
                              int num_tiles, float* out, CudaStream stream, int warp_rows = 0);

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_FLASH_PREFILL_H_
