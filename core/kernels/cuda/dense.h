#ifndef MOEMESH_CORE_KERNELS_CUDA_DENSE_H_
#define MOEMESH_CORE_KERNELS_CUDA_DENSE_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "core/kernels/cuda/cuda_runtime_util.h"
#include "core/kv/kv_dtype.h"

namespace moemesh {

// Element-wise and row-moving kernels for the dense part of the forward
// pass on the GPU. All pointers are device pointers; each call is enqueued
// on `stream`.

// out[i] = table[ids[i]] as fp32; `table` is [vocab, width], bf16 or fp32.
absl::Status EmbedRowsCuda(const void* table, bool bf16, int width, const int* ids, int n, float* out,
                           CudaStream stream);
// x rounded to bf16.
absl::Status ToBf16Cuda(const float* x, size_t n, uint16_t* out, CudaStream stream);
// y += x.
absl::Status AddCuda(float* y, const float* x, size_t n, CudaStream stream);
// y[r, j] += bias[j] for rows x width.
absl::Status AddBiasCuda(float* y, const float* bias, int rows, int width, CudaStream stream);
// Clamps to [-limit, limit].
absl::Status ClampCuda(float* y, size_t n, float limit, CudaStream stream);
// y = 1 / (1 + exp(-x)).
absl::Status SigmoidCuda(const float* x, size_t n, float* y, CudaStream stream);
// How a KV cache stores its elements: FP8 stores value / scale, rounded to
// nearest even and saturated at +-448; bf16 rounds to nearest even.
struct KvStore {
  KvDType dtype = KvDType::kF32;
  float k_scale = 1.f;
  float v_scale = 1.f;
};
// InvalidArgument naming `who` where FP8's scales are not positive and finite.
absl::Status CheckKvStore(const KvStore& store, const char* who);
// The K and V rows of a step into the KV cache in one launch: row r of `k`
// ([rows, k_width]) to k_dst[r], and of `v` to v_dst[r] (`v` null: keys
// only), as `store` says. The destinations are elements of its dtype.
absl::Status ScatterKvRowsCuda(const float* k, int k_width, void* const* k_dst, const float* v, int v_width,
                               void* const* v_dst, int rows, const KvStore& store, CudaStream stream);
// out[i] = src[rows[i]] (width floats each).
absl::Status GatherRowsCuda(const float* src, int width, const int* rows, int n, float* out, CudaStream stream);
// The ordered combine of routed experts' rows (CombineTable's table,
// core/experts/expert_work.h): out[t] = the sum of rows[row_index[i]] for i
// in [row_offsets[t], row_offsets[t + 1]), added in that order from 0.
absl::Status CombineRowsCuda(const float* rows, int width, const int* row_offsets, const int* row_index,
                             int tokens, float* out, CudaStream stream);

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_DENSE_H_
