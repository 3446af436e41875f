#include "core/kernels/cuda/ceilings.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "core/common/status_macros.h"
#include "core/kernels/cuda/cuda_check.cuh"
#include "core/kernels/cuda/cuda_runtime_util.h"

namespace moemesh {
namespace {

// A pseudo-random value in [-0.5, 0.5) for element i.
__device__ inline float Noise(size_t i, unsigned multiplier, unsigned seed) {
  unsigned x = static_cast<unsigned>(i) * multiplier ^ seed;
  x ^= x >> 13;
  x *= 0x5bd1e995u;
  x ^= x >> 15;
  return static_cast<float>(x & 0xffff) / 65536.f - 0.5f;
}

__global__ void FillRandomBf16(__nv_bfloat16* p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    p[i] = __float2bfloat16(Noise(i, 2654435761u, seed) * 0.1f);
  }
}

__global__ void FillRandomF32Kernel(float* p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    p[i] = Noise(i, 2246822519u, seed) * 2.f;
  }
}

}  // namespace

absl::Status FillRandomBf16(void* p, size_t n, unsigned seed) {
  FillRandomBf16<<<2048, 256>>>(static_cast<__nv_bfloat16*>(p), n, seed);
  return LaunchStatus("FillRandomBf16");
}

absl::Status FillRandomF32(float* p, size_t n, unsigned seed) {
  FillRandomF32Kernel<<<2048, 256>>>(p, n, seed);
  return LaunchStatus("FillRandomF32");
}

absl::StatusOr<double> TimeOnGpu(const std::function<absl::Status()>& f, int warmup, int iterations) {
  MM_ASSIGN_OR_RETURN(std::vector<double> t, TimeOnGpuInTurn({f}, warmup, iterations));
  return t[0];
}

absl::StatusOr<std::vector<double>> TimeOnGpuInTurn(const std::vector<std::function<absl::Status()>>& fs,
                                                    int warmup, int iterations) {
  if (fs.empty() || iterations < 1) return absl::InvalidArgumentError("TimeOnGpuInTurn: nothing to time");
  for (int i = 0; i < warmup; ++i) {
    for (const auto& f : fs) MM_RETURN_IF_ERROR(f());
  }
  cudaEvent_t a = nullptr, b = nullptr;
  if (absl::Status st = CudaStatus(cudaEventCreate(&a), "cudaEventCreate"); !st.ok()) return st;
  if (absl::Status st = CudaStatus(cudaEventCreate(&b), "cudaEventCreate"); !st.ok()) {
    cudaEventDestroy(a);
    return st;
  }
  auto once = [&](const std::function<absl::Status()>& f) -> absl::StatusOr<double> {
    MM_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(a), "cudaEventRecord"));
    MM_RETURN_IF_ERROR(f());
    MM_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(b), "cudaEventRecord"));
    MM_RETURN_IF_ERROR(CudaStatus(cudaEventSynchronize(b), "cudaEventSynchronize"));
    float ms = 0;
    MM_RETURN_IF_ERROR(CudaStatus(cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime"));
    return ms / 1e3;
  };
  std::vector<std::vector<double>> times(fs.size());
  absl::Status status;
  for (int i = 0; i < iterations && status.ok(); ++i) {
    for (size_t j = 0; j < fs.size() && status.ok(); ++j) {
      absl::StatusOr<double> t = once(fs[j]);
      if (t.ok()) {
        times[j].push_back(*t);
      } else {
        status = t.status();
      }
    }
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  if (!status.ok()) return status;
  std::vector<double> medians;
  for (std::vector<double>& t : times) {
    std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
    medians.push_back(t[t.size() / 2]);
  }
  return medians;
}

absl::Status WarmUpGpu(const std::function<absl::Status()>& f, double seconds) {
  const auto start = std::chrono::steady_clock::now();
  do {
    MM_RETURN_IF_ERROR(f());
    MM_RETURN_IF_ERROR(CudaStatus(cudaDeviceSynchronize(), "cudaDeviceSynchronize"));
  } while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < seconds);
  return absl::OkStatus();
}

absl::StatusOr<double> MeasureCopyBandwidth(size_t bytes, double warm_up_seconds) {
  auto src = DeviceBuffer::Allocate(bytes);
  auto dst = DeviceBuffer::Allocate(bytes);
  if (!src.ok()) return src.status();
  if (!dst.ok()) return dst.status();
  FillRandomBf16<<<1024, 256>>>((*src)->as<__nv_bfloat16>(), bytes / 2, 1);
  auto copy = [&] {
    return CudaStatus(cudaMemcpyAsync((*dst)->data(), (*src)->data(), bytes, cudaMemcpyDeviceToDevice),
                      "cudaMemcpyAsync");
  };
  MM_RETURN_IF_ERROR(WarmUpGpu(copy, warm_up_seconds));
  auto t = TimeOnGpu(copy, 3, 20);
  if (!t.ok()) return t.status();
  return 2.0 * bytes / *t;
}

absl::StatusOr<double> MeasureBf16GemmFlops(int m, int n, int k, double warm_up_seconds) {
  cublasHandle_t h;
  if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) return absl::InternalError("cublasCreate failed");
  auto a = DeviceBuffer::Allocate(static_cast<size_t>(m) * k * 2);
  auto b = DeviceBuffer::Allocate(static_cast<size_t>(k) * n * 2);
  auto c = DeviceBuffer::Allocate(static_cast<size_t>(m) * n * 2);
  if (!a.ok() || !b.ok() || !c.ok()) {
    cublasDestroy(h);
    return absl::ResourceExhaustedError("GEMM buffers");
  }
  FillRandomBf16<<<1024, 256>>>((*a)->as<__nv_bfloat16>(), static_cast<size_t>(m) * k, 2);
  FillRandomBf16<<<1024, 256>>>((*b)->as<__nv_bfloat16>(), static_cast<size_t>(k) * n, 3);
  const float alpha = 1.f, beta = 0.f;
  auto gemm = [&]() -> absl::Status {
    cublasStatus_t st = cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &alpha, (*a)->data(), CUDA_R_16BF, m,
                                     (*b)->data(), CUDA_R_16BF, k, &beta, (*c)->data(), CUDA_R_16BF, m,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    return st == CUBLAS_STATUS_SUCCESS ? absl::OkStatus() : absl::InternalError("cublasGemmEx failed");
  };
  const absl::Status warm = WarmUpGpu(gemm, warm_up_seconds);
  const absl::StatusOr<double> t = warm.ok() ? TimeOnGpu(gemm, 3, 10) : absl::StatusOr<double>(warm);
  cublasDestroy(h);
  if (!t.ok()) return t.status();
  return 2.0 * m * n * static_cast<double>(k) / *t;
}

}  // namespace moemesh
