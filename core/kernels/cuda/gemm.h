#ifndef MOEMESH_CORE_KERNELS_CUDA_GEMM_H_
#define MOEMESH_CORE_KERNELS_CUDA_GEMM_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/kernels/cuda/cuda_runtime_util.h"

namespace moemesh {

// Row-major matrix products on the GPU through cuBLAS (loaded at run time),
// for the dense part of the forward pass. All pointers are device pointers.
// Not thread-safe: one instance per stream.
class CudaGemm {
 public:
  // Products of up to `skinny_max_rows` rows (at most kSkinnyMaxRows) take
  // our kernel (below); more, or 0, take cuBLAS. bench/linear_bench sets
  // the two side by side. By default one row: on an H100 our kernel gained
  // at one row and, in its first version, lost at 2 to 8 (docs/PERFORMANCE.md).
  static constexpr int kSkinnyMaxRows = 8;
  static constexpr int kSkinnyDefaultRows = 1;
  static absl::StatusOr<std::unique_ptr<CudaGemm>> Create(int skinny_max_rows = kSkinnyDefaultRows);
  ~CudaGemm();

  // out[n, m] = x[n, k] . w[m, k]^T with bf16 weights: x is rounded to bf16
  // (in scratch that grows as needed), products accumulate in fp32, out is
  // fp32. The layers' Linear. Up to skinny_max_rows rows (decode steps) take
  // one kernel of ours, a warp per output column, instead of cuBLAS's two
  // or three.
  absl::Status LinearBf16(const float* x, int n, const uint16_t* w, int m, int k, float* out, CudaStream stream);
  // Several products of the same x, each with its own bf16 weights [m, k],
  // output and optional fp32 bias [m] (out = x . w^T + bias): one launch of
  // the skinny kernel where LinearBf16 would take it (a decode step's
  // query, key and value), else one LinearBf16 and bias each. Results are
  // those of LinearBf16 and a separate AddBiasCuda, bit for bit.
  static constexpr int kMaxSkinnyProducts = 3;
  struct Bf16Product {
    const uint16_t* w;
    int m;
    const float* bias;  // null: none
    float* out;
  };
  absl::Status LinearsBf16(const float* x, int n, int k, absl::Span<const Bf16Product> products, CudaStream stream);
  // The same with fp32 weights and fp32 arithmetic (no TF32), for small
  // matrices where rounding would matter (expert gates). Up to
  // skinny_max_rows rows take one kernel of ours, as above.
  absl::Status LinearF32(const float* x, int n, const float* w, int m, int k, float* out, CudaStream stream);

  // Batched fp32 products, batch b of `batch`: C_b[rows, cols] = A_b[rows, k]
  // . (transpose_b ? B_b[cols, k]^T : B_b[k, cols]), each matrix row-major with
  // the given leading dimension and batch stride (in elements).
  struct Batched {
    int rows, cols, k, batch;
    const float* a;
    int lda;
    long long stride_a;
    const float* b;
    int ldb;
    long long stride_b;
    bool transpose_b;
    float* c;
    int ldc;
    long long stride_c;
  };
  absl::Status BatchedF32(const Batched& p, CudaStream stream);

 private:
  // cuBLAS's workspace (cublasSetWorkspace): 32 MiB, what cuBLAS itself
  // takes on Hopper.
  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;
  CudaGemm() = default;
  int skinny_max_rows_ = 0;
  // Points the handle at `stream`, with our workspace.
  absl::Status SetStream(CudaStream stream);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_GEMM_H_
