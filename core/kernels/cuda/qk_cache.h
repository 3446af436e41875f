#ifndef MOEMESH_CORE_KERNELS_CUDA_QK_CACHE_H_
#define MOEMESH_CORE_KERNELS_CUDA_QK_CACHE_H_

#include "absl/status/status.h"
#include "core/kernels/cuda/cuda_runtime_util.h"
#include "core/kernels/cuda/dense.h"

namespace moemesh {

// What a grouped-query layer does to its query, key and value rows between
// their products and attention, in one launch (a decode step is bound by
// launches): each head of q and k normalised on its own where the norm's
// weights are given (Qwen3's qk-norm, as RmsNormCuda over rows of
// head_dim), then rotated (as RopeCuda), then k and v appended to the
// cache (as ScatterKvRowsCuda). The same results as those three, bit for
// bit. Device pointers; q is [tokens, q_heads * head_dim], k and v
// [tokens, kv_heads * head_dim], q and k rewritten in place.
struct QkRows {
  float* q = nullptr;
  float* k = nullptr;
  const float* v = nullptr;
  int tokens = 0;
  int q_heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
};
struct QkNorm {
  const float* q_weight = nullptr;  // [head_dim]; both null: no norm
  const float* k_weight = nullptr;
  float eps = 0.f;
};
struct QkRope {
  const float* inv_freq = nullptr;  // [dim / 2]
  float attention_scaling = 1.f;
  int dim = 0;  // the rotated channels of a head, even, <= head_dim
  bool interleaved = false;
  const int* positions = nullptr;  // [tokens]
};
absl::Status NormRotateCacheCuda(const QkRows& rows, const QkNorm& norm, const QkRope& rope, void* const* k_dst,
                                 void* const* v_dst, const KvStore& store, CudaStream stream);

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_QK_CACHE_H_
