#include "core/kernels/cuda/gemm.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/kernels/cuda/cublas_loader.cuh"
#include "core/kernels/cuda/cuda_check.cuh"
#include "core/kernels/cuda/dense.h"

namespace moemesh {
namespace {

// Products of at most kSkinnyRows rows (decode steps) are a matrix-vector
// product in all but name: cuBLAS spends two or three launches on them
// (rounding x to bf16, the product, a split-k reduction). One kernel does
// it here: a warp per output column (or four) reads its weight rows once,
// 16 bytes a lane at a time, for every row of x, rounding x to bf16 as it
// goes where the weights are bf16; fp32 sums.
constexpr int kSkinnyRows = CudaGemm::kSkinnyMaxRows;
constexpr int kSkinnyWarps = 8;  // per block

__device__ inline float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(~0u, v, o);
  return v;
}

__device__ inline float RoundBf16(float v) { return __bfloat162float(__float2bfloat16(v)); }

// A warp per kCols output columns: each x load serves kCols weight rows,
// which more rows of x need (the loads of x, not of the weights, bound the
// kernel past a few rows). k % 8 == 0; w and x 16-byte aligned.
template <int kRows, int kCols>
__global__ void __launch_bounds__(kSkinnyWarps * 32)
    SkinnyBf16Kernel(const float* __restrict__ x, int n, const __nv_bfloat16* __restrict__ w, int m, int k,
                     float* __restrict__ out) {
  const int col0 = (blockIdx.x * kSkinnyWarps + threadIdx.x / 32) * kCols, lane = threadIdx.x % 32;
  if (col0 >= m) return;
  float acc[kRows][kCols] = {};
#pragma unroll 4
  for (int c = lane; c < k / 8; c += 32) {
    float wf[kCols][8];
#pragma unroll
    for (int j = 0; j < kCols; ++j) {
      uint4 packed = make_uint4(0, 0, 0, 0);
      if (col0 + j < m) packed = reinterpret_cast<const uint4*>(w + static_cast<size_t>(col0 + j) * k)[c];
      const __nv_bfloat162* wp = reinterpret_cast<const __nv_bfloat162*>(&packed);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float2 f = __bfloat1622float2(wp[e]);
        wf[j][2 * e] = f.x, wf[j][2 * e + 1] = f.y;
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (r >= n) break;
      const float4* xr = reinterpret_cast<const float4*>(x + static_cast<size_t>(r) * k) + 2 * c;
      const float4 a = xr[0], b = xr[1];
      const float xv[8] = {RoundBf16(a.x), RoundBf16(a.y), RoundBf16(a.z), RoundBf16(a.w),
                           RoundBf16(b.x), RoundBf16(b.y), RoundBf16(b.z), RoundBf16(b.w)};
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[r][j] += wf[j][e] * xv[e];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    if (r >= n) break;
#pragma unroll
    for (int j = 0; j < kCols; ++j) {
      const float v = WarpSum(acc[r][j]);
      if (lane == 0 && col0 + j < m) out[static_cast<size_t>(r) * m + col0 + j] = v;
    }
  }
}

// The same with fp32 weights; k % 4 == 0.
template <int kRows, int kCols>
__global__ void __launch_bounds__(kSkinnyWarps * 32)
    SkinnyF32Kernel(const float* __restrict__ x, int n, const float* __restrict__ w, int m, int k,
                    float* __restrict__ out) {
  const int col0 = (blockIdx.x * kSkinnyWarps + threadIdx.x / 32) * kCols, lane = threadIdx.x % 32;
  if (col0 >= m) return;
  float acc[kRows][kCols] = {};
#pragma unroll 4
  for (int c = lane; c < k / 4; c += 32) {
    float4 wv[kCols];
#pragma unroll
    for (int j = 0; j < kCols; ++j) {
      wv[j] = col0 + j < m ? reinterpret_cast<const float4*>(w + static_cast<size_t>(col0 + j) * k)[c]
                           : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (r >= n) break;
      const float4 a = reinterpret_cast<const float4*>(x + static_cast<size_t>(r) * k)[c];
#pragma unroll
      for (int j = 0; j < kCols; ++j) acc[r][j] += wv[j].x * a.x + wv[j].y * a.y + wv[j].z * a.z + wv[j].w * a.w;
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    if (r >= n) break;
#pragma unroll
    for (int j = 0; j < kCols; ++j) {
      const float v = WarpSum(acc[r][j]);
      if (lane == 0 && col0 + j < m) out[static_cast<size_t>(r) * m + col0 + j] = v;
    }
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

bool Skinny(const float* x, int n, const void* w, int k, int k_multiple, int max_rows) {
  return n <= max_rows && k % k_multiple == 0 && Aligned16(x) && Aligned16(w);
}

// Blocks for m columns, `cols` a warp.
unsigned SkinnyBlocks(int m, int cols) {
  const int per_block = kSkinnyWarps * cols;
  return static_cast<unsigned>((m + per_block - 1) / per_block);
}

}  // namespace

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

absl::StatusOr<std::unique_ptr<CudaGemm>> CudaGemm::Create(int skinny_max_rows) {
  if (skinny_max_rows < 0 || skinny_max_rows > kSkinnyMaxRows) {
    return absl::InvalidArgumentError(absl::StrCat("CudaGemm: skinny_max_rows must be in [0, ", kSkinnyMaxRows, "]"));
  }
  std::unique_ptr<CudaGemm> g(new CudaGemm);
  g->skinny_max_rows_ = skinny_max_rows;
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
  if (Skinny(x, n, w, k, 8, skinny_max_rows_)) {
    // Up to two rows a column per warp keeps the most warps reading
    // weights; past that, four columns per warp share each load of x.
    const cudaStream_t st = static_cast<cudaStream_t>(stream);
    const auto* wb = reinterpret_cast<const __nv_bfloat16*>(w);
    if (n <= 2) {
      SkinnyBf16Kernel<2, 1><<<SkinnyBlocks(m, 1), kSkinnyWarps * 32, 0, st>>>(x, n, wb, m, k, out);
    } else {
      SkinnyBf16Kernel<kSkinnyRows, 4><<<SkinnyBlocks(m, 4), kSkinnyWarps * 32, 0, st>>>(x, n, wb, m, k, out);
    }
    return LaunchStatus("SkinnyBf16Kernel");
  }
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
  if (Skinny(x, n, w, k, 4, skinny_max_rows_)) {
    const cudaStream_t st = static_cast<cudaStream_t>(stream);
    if (n <= 2) {
      SkinnyF32Kernel<2, 1><<<SkinnyBlocks(m, 1), kSkinnyWarps * 32, 0, st>>>(x, n, w, m, k, out);
    } else {
      SkinnyF32Kernel<kSkinnyRows, 4><<<SkinnyBlocks(m, 4), kSkinnyWarps * 32, 0, st>>>(x, n, w, m, k, out);
    }
    return LaunchStatus("SkinnyF32Kernel");
  }
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
