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

// How a skinny product reads one 16-byte piece of a weight row, as floats.
struct Bf16Weights {
  using T = __nv_bfloat16;
  static constexpr int kPerLoad = 8;
  static constexpr bool kRoundX = true;  // x meets the weights in bf16, as cuBLAS's path rounds it
  __device__ static void Load(const T* row, int c, float* out) {
    const uint4 packed = reinterpret_cast<const uint4*>(row)[c];
    const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&packed);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float2 f = __bfloat1622float2(p[e]);
      out[2 * e] = f.x, out[2 * e + 1] = f.y;
    }
  }
};

struct F32Weights {
  using T = float;
  static constexpr int kPerLoad = 4;
  static constexpr bool kRoundX = false;
  __device__ static void Load(const T* row, int c, float* out) {
    const float4 v = reinterpret_cast<const float4*>(row)[c];
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
  }
};

// Up to kMaxSkinnyProducts products of the same x in one launch (a layer's
// query, key and value): each takes the blocks [block_begin[i],
// block_begin[i + 1]) of the grid.
struct SkinnyProducts {
  const void* w[CudaGemm::kMaxSkinnyProducts];
  const float* bias[CudaGemm::kMaxSkinnyProducts];  // null: none
  float* out[CudaGemm::kMaxSkinnyProducts];
  int m[CudaGemm::kMaxSkinnyProducts];
  int block_begin[CudaGemm::kMaxSkinnyProducts + 1];
  int count;
};

// A warp per kCols output columns: each x load serves kCols weight rows,
// which more rows of x need (the loads of x, not of the weights, bound the
// kernel past a few rows). k % W::kPerLoad == 0; w and x 16-byte aligned.
// The bias, where there is one, is added to the finished sum (as a
// separate AddBias would).
template <class W, int kRows, int kCols>
__global__ void __launch_bounds__(kSkinnyWarps * 32)
    SkinnyKernel(const float* __restrict__ x, int n, SkinnyProducts p, int k) {
  constexpr int kPer = W::kPerLoad;
  // Which product this block's: constant indices keep the table in the
  // parameters (an indexed one is copied to each thread's stack).
  const void* wp = p.w[0];
  const float* bias = p.bias[0];
  float* out = p.out[0];
  int m = p.m[0], begin = 0;
#pragma unroll
  for (int j = 1; j < CudaGemm::kMaxSkinnyProducts; ++j) {
    if (j < p.count && static_cast<int>(blockIdx.x) >= p.block_begin[j]) {
      wp = p.w[j], bias = p.bias[j], out = p.out[j], m = p.m[j], begin = p.block_begin[j];
    }
  }
  const typename W::T* __restrict__ w = static_cast<const typename W::T*>(wp);
  const int col0 = ((blockIdx.x - begin) * kSkinnyWarps + threadIdx.x / 32) * kCols, lane = threadIdx.x % 32;
  if (col0 >= m) return;
  float acc[kRows][kCols] = {};
  // A lane's weight pieces are loaded kBatch at a time, all in flight
  // together, before any is used: a decode step's products take a few
  // microseconds, where each further round of loads costs as much again.
  constexpr int kBatch = kCols == 1 ? 4 : 2;
  const int pieces = k / kPer;
  for (int c0 = lane; c0 < pieces; c0 += 32 * kBatch) {
    float wf[kBatch][kCols][kPer];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int c = c0 + 32 * b;
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
        if (c < pieces && col0 + j < m) {
          W::Load(w + static_cast<size_t>(col0 + j) * k, c, wf[b][j]);
        } else {
#pragma unroll
          for (int e = 0; e < kPer; ++e) wf[b][j][e] = 0.f;
        }
      }
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int c = c0 + 32 * b;
      if (c >= pieces) break;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (r >= n) break;
        const float4* xr =
            reinterpret_cast<const float4*>(x + static_cast<size_t>(r) * k + static_cast<size_t>(c) * kPer);
        float xv[kPer];
#pragma unroll
        for (int q = 0; q < kPer / 4; ++q) {
          const float4 v = xr[q];
          xv[4 * q] = v.x, xv[4 * q + 1] = v.y, xv[4 * q + 2] = v.z, xv[4 * q + 3] = v.w;
        }
        if (W::kRoundX) {
#pragma unroll
          for (int e = 0; e < kPer; ++e) xv[e] = RoundBf16(xv[e]);
        }
#pragma unroll
        for (int j = 0; j < kCols; ++j) {
#pragma unroll
          for (int e = 0; e < kPer; ++e) acc[r][j] += wf[b][j][e] * xv[e];
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    if (r >= n) break;
#pragma unroll
    for (int j = 0; j < kCols; ++j) {
      float v = WarpSum(acc[r][j]);
      if (lane == 0 && col0 + j < m) {
        if (bias != nullptr) v += bias[col0 + j];
        out[static_cast<size_t>(r) * m + col0 + j] = v;
      }
    }
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Blocks for m columns, `cols` a warp.
unsigned SkinnyBlocks(int m, int cols) {
  const int per_block = kSkinnyWarps * cols;
  return static_cast<unsigned>((m + per_block - 1) / per_block);
}

// Up to two rows a column per warp keeps the most warps reading weights;
// past that, four columns per warp share each load of x. Fills in the
// products' blocks.
template <class W>
absl::Status LaunchSkinny(const float* x, int n, SkinnyProducts p, int k, CudaStream stream) {
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  const int cols = n <= 2 ? 1 : 4;
  p.block_begin[0] = 0;
  for (int i = 0; i < p.count; ++i) p.block_begin[i + 1] = p.block_begin[i] + static_cast<int>(SkinnyBlocks(p.m[i], cols));
  const unsigned blocks = static_cast<unsigned>(p.block_begin[p.count]);
  if (blocks == 0) return absl::OkStatus();
  if (n <= 2) {
    SkinnyKernel<W, 2, 1><<<blocks, kSkinnyWarps * 32, 0, st>>>(x, n, p, k);
  } else {
    SkinnyKernel<W, kSkinnyRows, 4><<<blocks, kSkinnyWarps * 32, 0, st>>>(x, n, p, k);
  }
  return LaunchStatus("SkinnyKernel");
}

SkinnyProducts OneProduct(const void* w, int m, float* out) {
  SkinnyProducts p{};
  p.w[0] = w, p.m[0] = m, p.out[0] = out, p.count = 1;
  return p;
}

bool Skinny(const float* x, int n, const void* w, int k, int k_multiple, int max_rows) {
  return n <= max_rows && k % k_multiple == 0 && Aligned16(x) && Aligned16(w);
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
  if (Skinny(x, n, w, k, Bf16Weights::kPerLoad, skinny_max_rows_)) {
    return LaunchSkinny<Bf16Weights>(x, n, OneProduct(w, m, out), k, stream);
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

absl::Status CudaGemm::LinearsBf16(const float* x, int n, int k, absl::Span<const Bf16Product> products,
                                   CudaStream stream) {
  if (products.size() > static_cast<size_t>(kMaxSkinnyProducts)) {
    return absl::InvalidArgumentError(absl::StrCat("CudaGemm::LinearsBf16: at most ", kMaxSkinnyProducts, " products"));
  }
  if (n == 0 || products.empty()) return absl::OkStatus();
  bool skinny = true;
  for (const Bf16Product& p : products) skinny = skinny && Skinny(x, n, p.w, k, Bf16Weights::kPerLoad, skinny_max_rows_);
  if (skinny) {
    SkinnyProducts sp{};
    for (const Bf16Product& p : products) {
      sp.w[sp.count] = p.w, sp.bias[sp.count] = p.bias, sp.out[sp.count] = p.out, sp.m[sp.count] = p.m;
      ++sp.count;
    }
    return LaunchSkinny<Bf16Weights>(x, n, sp, k, stream);
  }
  for (const Bf16Product& p : products) {
    MM_RETURN_IF_ERROR(LinearBf16(x, n, p.w, p.m, k, p.out, stream));
    if (p.bias != nullptr) MM_RETURN_IF_ERROR(AddBiasCuda(p.out, p.bias, n, p.m, stream));
  }
  return absl::OkStatus();
}

absl::Status CudaGemm::LinearF32(const float* x, int n, const float* w, int m, int k, float* out, CudaStream stream) {
  if (n == 0) return absl::OkStatus();
  if (Skinny(x, n, w, k, F32Weights::kPerLoad, skinny_max_rows_)) {
    return LaunchSkinny<F32Weights>(x, n, OneProduct(w, m, out), k, stream);
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
