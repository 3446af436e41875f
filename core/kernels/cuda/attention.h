#ifndef MOEMESH_CORE_KERNELS_CUDA_ATTENTION_H_
#define MOEMESH_CORE_KERNELS_CUDA_ATTENTION_H_

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/kernels/cpu/attention.h"
#include "core/kernels/cuda/cuda_runtime_util.h"
#include "core/kv/kv_dtype.h"

namespace moemesh {

// A paged KV cache in device memory, as KvPages (core/kernels/cpu/attention.h)
// but of any KvDType: strides and offsets count elements, and a stored FP8
// code c stands for c * k_scale (keys) or c * v_scale (values).
struct CudaKvPages {
  const void* const* k_blocks = nullptr;
  const void* const* v_blocks = nullptr;
  int block_size = 0;
  int k_stride = 0;
  int v_stride = 0;
  int k_offset = 0;
  int v_offset = 0;
  KvDType dtype = KvDType::kF32;
  float k_scale = 1.f;  // FP8 only
  float v_scale = 1.f;
};

// The query rows of one batched attention call, from any number of
// sequences: row r is at position positions[r] of the sequence whose block
// table starts at kv.k_blocks + page_offsets[r] (and kv.v_blocks +
// page_offsets[r]); it attends to that sequence's keys at positions
// 0 .. positions[r] (or the sliding window's), already in the cache.
// Every pointer is a device pointer; page pointers are 16-byte aligned.
struct PagedRows {
  CudaKvPages kv;
  const int* positions = nullptr;     // [rows]
  const int* page_offsets = nullptr;  // [rows]
  int rows = 0;
  int max_position = 0;  // at least every positions[r]; sizes the split
};

// Rows [first_row, first_row + count) of one call that belong to one
// sequence, at consecutive positions (a prompt chunk, or a decode row).
struct RowSpan {
  int first_row = 0;
  int count = 0;
};

// CausalAttention (core/kernels/cpu/attention.h) on the GPU over a paged KV
// cache, with GQA, sliding windows, and K/V head sizes that differ (latent
// attention, where V may be the head of K's row), for head sizes up to
// kMaxAttentionHeadDim (DeepSeek-V3's latent rows are 512 + 64 wide).
//
// Flash-decoding: each row's keys are split into chunks that run as
// separate blocks, and a second kernel merges their partial softmaxes. A
// block serves all query heads of one KV head (up to 8 or 16 of them), so
// a KV row is read once per group, not once per head; tiles of keys are
// copied into shared memory with 16-byte cp.async, two tiles in flight.
// Scores, softmax and sums are fp32, as on the CPU; bf16 and FP8 caches
// are widened to fp32 as they are read from shared memory (an FP8 code
// times its scale, folded into the score scale for keys and into the
// output for values). Two cases do enough
// arithmetic per byte for tensor cores, where both products run in TF32
// (10-bit mantissas, fp32 sums; within 3e-3 of the CPU): latent attention
// (16 or more query heads over rows whose heads are V, as in DeepSeek-V3),
// and calls with prompt chunks (`sequences`), whose consecutive rows share
// each tile of keys read. A call with any prompt chunk runs all its rows
// that way; over a bf16 cache with equal head sizes of 16, 32, 64 or 128,
// in FlashAttention-2's layout instead (core/kernels/cuda/flash_prefill.h:
// bf16 products, within about 1e-2 of fp32). Decode rows over a bf16 cache
// of GQA rows with heads of 64 or 128 take core/kernels/cuda/flash_decode.h
// (bf16 products, more of the cache in flight; the same merge).
//
// Holds the scratch for the partial results; one instance per stream.
inline constexpr int kMaxAttentionHeadDim = 640;
class CudaPagedAttention {
 public:
  CudaPagedAttention();
  ~CudaPagedAttention();
  CudaPagedAttention(const CudaPagedAttention&) = delete;
  CudaPagedAttention& operator=(const CudaPagedAttention&) = delete;

  // q: [rows, num_heads * head_dim]; out: [rows, num_heads * v_head_dim].
  // `sequences` (host memory, optional; if given, covering every row once,
  // in order) says which rows are prompt chunks: those run in tiles of
  // consecutive rows on tensor cores.
  absl::Status Run(const AttentionShape& shape, const float* q, const PagedRows& rows, float* out,
                   CudaStream stream, absl::Span<const RowSpan> sequences = {});

  // Rows a warp of FlashAttention-2's prefill kernel takes (16 or 32; 0,
  // the default, kFlashPrefillWarpRows): for benchmarks and tests.
  void set_flash_warp_rows(int rows) { flash_warp_rows_ = rows; }
  // Whether decode rows over a bf16 cache take FlashDecodeCuda (the
  // default) or the CUDA-core kernel: for benchmarks.
  void set_flash_decode(bool on) { flash_decode_ = on; }

 private:
  // The spans cut into tiles of up to `per_tile` rows, [tile][2] first row
  // and count (num_tiles_ of them), in tiles_; with `singles_apart`,
  // spans of one row are not tiles but listed after them, a row id each.
  // Copied only when they change: a step's layers ask for the same.
  absl::Status UploadTiles(absl::Span<const RowSpan> sequences, int per_tile, bool singles_apart,
                           CudaStream stream);

  std::unique_ptr<DeviceBuffer> partials_, tiles_;
  std::vector<int> tiles_host_;  // what tiles_ holds
  int num_tiles_ = 0;
  int sm_count_ = 0, smem_limit_ = 0;
  int flash_warp_rows_ = 0;
  bool flash_decode_ = true;
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_ATTENTION_H_
