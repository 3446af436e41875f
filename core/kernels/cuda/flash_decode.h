#ifndef MOEMESH_CORE_KERNELS_CUDA_FLASH_DECODE_H_
#define MOEMESH_CORE_KERNELS_CUDA_FLASH_DECODE_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/kernels/cuda/attention.h"

namespace moemesh {

// Decode rows (one new position a sequence) over a bf16 KV cache of GQA
// rows, for CudaPagedAttention: a block takes one row, one KV head and one
// chunk of its keys (flash-decoding's split), holds the group's query
// heads (up to 16, rounded to bf16) as the m16 side of bf16 tensor-core
// products (mma.sync m16n8k16, fp32 sums), and keeps kFlashDecodeStages
// tiles of kFlashDecodeKeys keys in flight through cp.async: decode is
// bound by reading the cache, and the CUDA-core kernel kept too few bytes
// in flight. Each of the block's four warps takes a quarter of every tile
// with its own online softmax; the warps' results merge at the end. Within
// about 1e-2 of fp32 attention over the same cache.
inline constexpr int kFlashDecodeKeys = 64;
inline constexpr int kFlashDecodeStages = 3;

// Whether the kernel takes this call: a bf16 cache of separate K and V
// rows in 16-byte pieces, head sizes equal and 64 or 128, at most 16 query
// heads a KV head.
bool FlashDecodeFits(const AttentionShape& s, const PagedRows& rows, const float* q);

// How many of its blocks run at once on one multiprocessor of this GPU,
// for heads of s.head_dim (64 or 128): what sizes the split.
absl::StatusOr<int> FlashDecodeBlocksPerSm(const AttentionShape& s);

// Each of `num_rows` rows' keys (0 .. its position, or its window) in
// `splits` chunks of whole tiles: rows row_ids[0 .. num_rows) (device
// memory), or with no row_ids rows 0 .. num_rows. With one split it writes
// those rows of `out` ([rows][heads][head_dim]);
// with more, each chunk's unnormalised sums to part_acc
// ([rows][heads][splits][head_dim]) and its running max (natural-log units
// of the scaled scores; -inf for a chunk without keys) and sum to part_ml
// ([rows][heads][splits][2]), for CudaPagedAttention's merge.
absl::Status FlashDecodeCuda(const AttentionShape& s, const float* q, const PagedRows& rows, const int* row_ids,
                             int num_rows, float* out, int splits, float* part_acc, float* part_ml,
                             CudaStream stream);

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_FLASH_DECODE_H_
