#include "core/kernels/cuda/qk_cache.h"

#include <algorithm>
#include <cstdint>

#include "core/common/status_macros.h"
#include "core/kernels/cuda/block_reduce.cuh"
#include "core/kernels/cuda/cuda_check.cuh"
#include "core/kernels/cuda/kv_narrow.cuh"
#include "core/kernels/cuda/rope.cuh"

namespace moemesh {
namespace {

constexpr int kMaxThreads = 256;

// One block per (token, head), the query heads first, then the key heads
// (each with its value head). The head is staged in shared memory: its
// norm, rotation and stores read it there.
template <typename T>
__global__ void __launch_bounds__(kMaxThreads)
    NormRotateCacheKernel(QkRows rows, QkNorm norm, QkRope rope, void* const* k_dst, void* const* v_dst,
                          float k_inv, float v_inv) {
  const int t = blockIdx.x, h = blockIdx.y, hd = rows.head_dim;
  const bool is_q = h < rows.q_heads;
  const int kh = h - rows.q_heads;
  float* src = is_q ? rows.q + (static_cast<size_t>(t) * rows.q_heads + h) * hd
                    : rows.k + (static_cast<size_t>(t) * rows.kv_heads + kh) * hd;
  const float* w = is_q ? norm.q_weight : norm.k_weight;
  extern __shared__ float sh[];
  float* head = sh;
  float* tmp = sh + hd;
  // RmsNormKernel's sum, in the same order: with at most 256 threads a
  // head of up to 256 floats is one element a thread there and here.
  float sum = 0.f;
  for (int i = threadIdx.x; i < hd; i += blockDim.x) {
    const float v = src[i];
    head[i] = v;
    sum += v * v;
  }
  if (w != nullptr) {
    const float scale = BlockRmsScale<kMaxThreads>(sum, hd, norm.eps);
    for (int i = threadIdx.x; i < hd; i += blockDim.x) head[i] = w[i] * (head[i] * scale);
  }
  __syncthreads();
  RotateHead(rope.inv_freq, rope.attention_scaling, rope.dim, rope.interleaved, static_cast<float>(rope.positions[t]),
             head, tmp);
  __syncthreads();
  for (int i = threadIdx.x; i < hd; i += blockDim.x) src[i] = head[i];
  if (is_q) return;
  T* kd = static_cast<T*>(k_dst[t]) + static_cast<size_t>(kh) * hd;
  T* vd = static_cast<T*>(v_dst[t]) + static_cast<size_t>(kh) * hd;
  const float* vs = rows.v + (static_cast<size_t>(t) * rows.kv_heads + kh) * hd;
  for (int i = threadIdx.x; i < hd; i += blockDim.x) {
    kd[i] = Narrow<T>(head[i], k_inv);
    vd[i] = Narrow<T>(vs[i], v_inv);
  }
}

}  // namespace

absl::Status NormRotateCacheCuda(const QkRows& rows, const QkNorm& norm, const QkRope& rope, void* const* k_dst,
                                 void* const* v_dst, const KvStore& store, CudaStream stream) {
  if (rows.tokens < 0 || rows.q_heads < 0 || rows.kv_heads < 0 || rows.head_dim <= 0) {
    return absl::InvalidArgumentError("NormRotateCacheCuda: negative sizes or no head_dim");
  }
  if (rope.dim <= 0 || rope.dim % 2 != 0 || rope.dim > rows.head_dim) {
    return absl::InvalidArgumentError("NormRotateCacheCuda: the rotated channels must be even and within a head");
  }
  if ((norm.q_weight == nullptr) != (norm.k_weight == nullptr)) {
    return absl::InvalidArgumentError("NormRotateCacheCuda: both norms or neither");
  }
  // Two heads' floats of shared memory; 48 KB by default.
  if (rows.head_dim > 4096) return absl::InvalidArgumentError("NormRotateCacheCuda: head_dim above 4096");
  MM_RETURN_IF_ERROR(CheckKvStore(store, "NormRotateCacheCuda"));
  if (rows.tokens == 0 || rows.q_heads + rows.kv_heads == 0) return absl::OkStatus();
  const int threads = std::min(kMaxThreads, (rows.head_dim + 31) / 32 * 32);
  const dim3 grid(rows.tokens, rows.q_heads + rows.kv_heads);
  const size_t smem = 2 * static_cast<size_t>(rows.head_dim) * sizeof(float);
  const float k_inv = 1.f / store.k_scale, v_inv = 1.f / store.v_scale;
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (store.dtype) {
    case KvDType::kF32:
      NormRotateCacheKernel<float><<<grid, threads, smem, st>>>(rows, norm, rope, k_dst, v_dst, 1.f, 1.f);
      break;
    case KvDType::kBf16:
      NormRotateCacheKernel<uint16_t><<<grid, threads, smem, st>>>(rows, norm, rope, k_dst, v_dst, 1.f, 1.f);
      break;
    case KvDType::kF8E4M3:
      NormRotateCacheKernel<uint8_t><<<grid, threads, smem, st>>>(rows, norm, rope, k_dst, v_dst, k_inv, v_inv);
      break;
  }
  return LaunchStatus("NormRotateCacheKernel");
}

}  // namespace moemesh
