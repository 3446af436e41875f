#include "core/kernels/cuda/gemm.h"

#include <cuda_bf16.h>

#include <algorithm>

#include "core/common/status_macros.h"
#include "core/kernels/cuda/cublas_loader.cuh"
#include "core/kernels/cuda/cuda_check.cuh"
#include "core/kernels/cuda/dense.h"

namespace moemesh {

struct CudaGemm::Impl {
  const CublasApi* api = nullptr;
  cublasHandle_t handle = nullptr;
  std::unique_ptr<DeviceBuffer> x_bf16;
  // cuBLAS's workspace, ours: its default one may be allocated during a
  // call, which a CUDA graph's capture cannot take.
  std::unique_ptr<DeviceBuffer> workspace;
  ~Impl() {
    if (handle != nullptr) api->destroy(handle);
  }
};

absl::StatusOr<std::unique_ptr<CudaGemm>> CudaGemm::Create() {
  std::unique_ptr<CudaGemm> g(new CudaGemm);
  g->impl_ = std::make_unique<Impl>();
  MM_ASSIGN_OR_RETURN(g->impl_->api, LoadCublas());
  MM_RETURN_IF_ERROR(g->impl_->api->Check(g->impl_->api->create(&g->impl_->handle), "cublasCreate"));
  MM_ASSIGN_OR_RETURN(g->impl_->workspace, DeviceBuffer::Allocate(kWorkspaceBytes));
  return g;
}

absl::Status CudaGemm::SetStream(CudaStream stream) {
  const CublasApi& api = *impl_->api;
  MM_RETURN_IF_ERROR(api.Check(api.set_stream(impl_->handle, static_cast<cudaStream_t>(stream)), "cublasSetStream"));
  // Setting the stream resets the workspace to cuBLAS's own.
  return api.Check(api.set_workspace(impl_->handle, impl_->workspace->data(), impl_->workspace->bytes()),
                   "cublasSetWorkspace");
}

CudaGemm::~CudaGemm() = default;

// Row-major out[n, m] = x[n, k] . w[m, k]^T is, in cuBLAS's column-major
// terms, out^T = w . x^T with w read transposed.
absl::Status CudaGemm::LinearBf16(const float* x, int n, const uint16_t* w, int m, int k, float* out,
                                  CudaStream stream) {
  if (n == 0) return absl::OkStatus();
  const CublasApi& api = *impl_->api;
  const size_t need = static_cast<size_t>(n) * k * 2;
  if (impl_->x_bf16 == nullptr || impl_->x_bf16->bytes() < need) {
    impl_->x_bf16.reset();  // cudaFree waits for work that may still read it
    MM_ASSIGN_OR_RETURN(impl_->x_bf16, DeviceBuffer::Allocate(2 * need));
  }
  MM_RETURN_IF_ERROR(ToBf16Cuda(x, static_cast<size_t>(n) * k, impl_->x_bf16->as<uint16_t>(), stream));
  MM_RETURN_IF_ERROR(SetStream(stream));
  const float one = 1.f, zero = 0.f;
  return api.Check(api.gemm_ex(impl_->handle, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one, w, CUDA_R_16BF, k,
                               impl_->x_bf16->data(), CUDA_R_16BF, k, &zero, out, CUDA_R_32F, m, CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT),
                   "cublasGemmEx (bf16)");
}

absl::Status CudaGemm::LinearF32(const float* x, int n, const float* w, int m, int k, float* out, CudaStream stream) {
  if (n == 0) return absl::OkStatus();
  const CublasApi& api = *impl_->api;
  MM_RETURN_IF_ERROR(SetStream(stream));
  const float one = 1.f, zero = 0.f;
  return api.Check(api.gemm_ex(impl_->handle, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one, w, CUDA_R_32F, k, x,
                               CUDA_R_32F, k, &zero, out, CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                   "cublasGemmEx (fp32)");
}

// Row-major C = A . op(B) is column-major C^T = op(B)^T . A^T: cuBLAS's
// first operand is B (transposed when op is the identity's opposite).
absl::Status CudaGemm::BatchedF32(const Batched& p, CudaStream stream) {
  if (p.rows == 0 || p.batch == 0) return absl::OkStatus();
  const CublasApi& api = *impl_->api;
  MM_RETURN_IF_ERROR(SetStream(stream));
  const float one = 1.f, zero = 0.f;
  return api.Check(
      api.gemm_strided_batched_ex(impl_->handle, p.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, p.cols,
                                  p.rows, p.k, &one, p.b, CUDA_R_32F, p.ldb, p.stride_b, p.a, CUDA_R_32F, p.lda,
                                  p.stride_a, &zero, p.c, CUDA_R_32F, p.ldc, p.stride_c, p.batch, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT),
      "cublasGemmStridedBatchedEx");
}

}  // namespace moemesh
