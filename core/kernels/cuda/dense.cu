#include "core/kernels/cuda/dense.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/kernels/cuda/cuda_check.cuh"
#include "core/kernels/cuda/kv_narrow.cuh"

namespace moemesh {
namespace {

unsigned Blocks(size_t n) { return static_cast<unsigned>(std::max<size_t>(1, std::min<size_t>((n + 255) / 256, 4096))); }

#define MM_GRID_STRIDE(i, n)                                                          \
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<size_t>(gridDim.x) * blockDim.x)

__global__ void EmbedKernel(const void* table, bool bf16, int width, const int* ids, int n, float* out) {
  MM_GRID_STRIDE(i, static_cast<size_t>(n) * width) {
    const size_t src = static_cast<size_t>(ids[i / width]) * width + i % width;
    out[i] = bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(table)[src])
                  : static_cast<const float*>(table)[src];
  }
}

__global__ void ToBf16Kernel(const float* x, size_t n, __nv_bfloat16* out) {
  MM_GRID_STRIDE(i, n) { out[i] = __float2bfloat16(x[i]); }
}

// Four at a time: 16-byte loads, 8-byte stores.
__global__ void ToBf16x4Kernel(const float4* x, size_t n4, uint2* out) {
  MM_GRID_STRIDE(i, n4) {
    const float4 v = x[i];
    const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
    out[i] = make_uint2(*reinterpret_cast<const unsigned*>(&lo), *reinterpret_cast<const unsigned*>(&hi));
  }
}

__global__ void AddKernel(float* y, const float* x, size_t n) {
  MM_GRID_STRIDE(i, n) { y[i] += x[i]; }
}

__global__ void AddBiasKernel(float* y, const float* bias, int rows, int width) {
  MM_GRID_STRIDE(i, static_cast<size_t>(rows) * width) { y[i] += bias[i % width]; }
}

__global__ void ClampKernel(float* y, size_t n, float limit) {
  MM_GRID_STRIDE(i, n) { y[i] = fminf(fmaxf(y[i], -limit), limit); }
}

__global__ void SigmoidKernel(const float* x, size_t n, float* y) {
  MM_GRID_STRIDE(i, n) { y[i] = 1.f / (1.f + expf(-x[i])); }
}

template <typename T>
__global__ void ScatterKvRowsKernel(const float* k, int k_width, void* const* k_dst, const float* v, int v_width,
                                    void* const* v_dst, int rows, float k_inv, float v_inv) {
  const int width = k_width + (v != nullptr ? v_width : 0);
  MM_GRID_STRIDE(i, static_cast<size_t>(rows) * width) {
    const int r = static_cast<int>(i / width), j = static_cast<int>(i % width);
    if (j < k_width) {
      static_cast<T*>(k_dst[r])[j] = Narrow<T>(k[static_cast<size_t>(r) * k_width + j], k_inv);
    } else {
      static_cast<T*>(v_dst[r])[j - k_width] = Narrow<T>(v[static_cast<size_t>(r) * v_width + j - k_width], v_inv);
    }
  }
}

__global__ void GatherRowsKernel(const float* src, int width, const int* rows, int n, float* out) {
  MM_GRID_STRIDE(i, static_cast<size_t>(n) * width) {
    out[i] = src[static_cast<size_t>(rows[i / width]) * width + i % width];
  }
}

// One block per token: the sum starts at 0 and adds the token's rows in
// table order, as CombineExpertRows does on the host, so both give the same
// bits (additions only: nothing to contract into an FMA).
__global__ void CombineRowsKernel(const float* rows, int width, const int* offsets, const int* index, float* out) {
  const int t = blockIdx.x;
  const int begin = offsets[t], end = offsets[t + 1];
  for (int d = threadIdx.x; d < width; d += blockDim.x) {
    float s = 0.0f;
    for (int i = begin; i < end; ++i) s += rows[static_cast<size_t>(index[i]) * width + d];
    out[static_cast<size_t>(t) * width + d] = s;
  }
}

#undef MM_GRID_STRIDE

}  // namespace

absl::Status EmbedRowsCuda(const void* table, bool bf16, int width, const int* ids, int n, float* out,
                           CudaStream stream) {
  if (n == 0) return absl::OkStatus();
  EmbedKernel<<<Blocks(static_cast<size_t>(n) * width), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      table, bf16, width, ids, n, out);
  return LaunchStatus("EmbedKernel");
}

absl::Status ToBf16Cuda(const float* x, size_t n, uint16_t* out, CudaStream stream) {
  if (n == 0) return absl::OkStatus();
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  size_t done = 0;
  if (reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 8 == 0 && n >= 4) {
    const size_t n4 = n / 4;
    ToBf16x4Kernel<<<Blocks(n4), 256, 0, st>>>(reinterpret_cast<const float4*>(x), n4, reinterpret_cast<uint2*>(out));
    MM_RETURN_IF_ERROR(LaunchStatus("ToBf16x4Kernel"));
    done = 4 * n4;
  }
  if (done == n) return absl::OkStatus();
  ToBf16Kernel<<<Blocks(n - done), 256, 0, st>>>(x + done, n - done, reinterpret_cast<__nv_bfloat16*>(out) + done);
  return LaunchStatus("ToBf16Kernel");
}

absl::Status AddCuda(float* y, const float* x, size_t n, CudaStream stream) {
  if (n == 0) return absl::OkStatus();
  AddKernel<<<Blocks(n), 256, 0, static_cast<cudaStream_t>(stream)>>>(y, x, n);
  return LaunchStatus("AddKernel");
}

absl::Status AddBiasCuda(float* y, const float* bias, int rows, int width, CudaStream stream) {
  if (rows == 0) return absl::OkStatus();
  AddBiasKernel<<<Blocks(static_cast<size_t>(rows) * width), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      y, bias, rows, width);
  return LaunchStatus("AddBiasKernel");
}

absl::Status ClampCuda(float* y, size_t n, float limit, CudaStream stream) {
  if (n == 0) return absl::OkStatus();
  ClampKernel<<<Blocks(n), 256, 0, static_cast<cudaStream_t>(stream)>>>(y, n, limit);
  return LaunchStatus("ClampKernel");
}

absl::Status SigmoidCuda(const float* x, size_t n, float* y, CudaStream stream) {
  if (n == 0) return absl::OkStatus();
  SigmoidKernel<<<Blocks(n), 256, 0, static_cast<cudaStream_t>(stream)>>>(x, n, y);
  return LaunchStatus("SigmoidKernel");
}

absl::Status CheckKvStore(const KvStore& store, const char* who) {
  if (store.dtype == KvDType::kF8E4M3 &&
      !(store.k_scale > 0 && store.v_scale > 0 && std::isfinite(store.k_scale) && std::isfinite(store.v_scale))) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": FP8 scales must be positive and finite"));
  }
  return absl::OkStatus();
}

absl::Status ScatterKvRowsCuda(const float* k, int k_width, void* const* k_dst, const float* v, int v_width,
                               void* const* v_dst, int rows, const KvStore& store, CudaStream stream) {
  const size_t count = static_cast<size_t>(rows) * (k_width + (v != nullptr ? v_width : 0));
  if (count == 0) return absl::OkStatus();
  MM_RETURN_IF_ERROR(CheckKvStore(store, "ScatterKvRowsCuda"));
  const float k_inv = 1.f / store.k_scale, v_inv = 1.f / store.v_scale;
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (store.dtype) {
    case KvDType::kF32:
      ScatterKvRowsKernel<float><<<Blocks(count), 256, 0, st>>>(k, k_width, k_dst, v, v_width, v_dst, rows, 1.f, 1.f);
      break;
    case KvDType::kBf16:
      ScatterKvRowsKernel<uint16_t><<<Blocks(count), 256, 0, st>>>(k, k_width, k_dst, v, v_width, v_dst, rows, 1.f,
                                                                    1.f);
      break;
    case KvDType::kF8E4M3:
      ScatterKvRowsKernel<uint8_t><<<Blocks(count), 256, 0, st>>>(k, k_width, k_dst, v, v_width, v_dst, rows, k_inv,
                                                                   v_inv);
      break;
  }
  return LaunchStatus("ScatterKvRowsKernel");
}

absl::Status GatherRowsCuda(const float* src, int width, const int* rows, int n, float* out, CudaStream stream) {
  if (n == 0) return absl::OkStatus();
  GatherRowsKernel<<<Blocks(static_cast<size_t>(n) * width), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      src, width, rows, n, out);
  return LaunchStatus("GatherRowsKernel");
}

absl::Status CombineRowsCuda(const float* rows, int width, const int* row_offsets, const int* row_index,
                             int tokens, float* out, CudaStream stream) {
  if (tokens == 0) return absl::OkStatus();
  CombineRowsKernel<<<tokens, 256, 0, static_cast<cudaStream_t>(stream)>>>(rows, width, row_offsets, row_index, out);
  return LaunchStatus("CombineRowsKernel");
}

}  // namespace moemesh
