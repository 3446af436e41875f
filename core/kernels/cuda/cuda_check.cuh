#ifndef MOEMESH_CORE_KERNELS_CUDA_CUDA_CHECK_CUH_
#define MOEMESH_CORE_KERNELS_CUDA_CUDA_CHECK_CUH_

// For .cu files only: CUDA errors as absl::Status.

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace moemesh {

inline absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorName(e), ": ", cudaGetErrorString(e)));
}

// The status of the last kernel launch.
inline absl::Status LaunchStatus(const char* kernel) { return CudaStatus(cudaGetLastError(), kernel); }

// Lets kKernel take `bytes` (always the same for one kernel) of dynamic
// shared memory, past the default 48 KB: asks the driver once per device
// rather than on every eager launch.
template <auto kKernel>
absl::Status AllowDynamicSmem(size_t bytes, const char* what) {
  static std::atomic<uint64_t> done{0};  // bit d: device d was asked
  int device = 0;
  if (absl::Status st = CudaStatus(cudaGetDevice(&device), "cudaGetDevice"); !st.ok()) return st;
  const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
  if (bit != 0 && (done.load(std::memory_order_acquire) & bit) != 0) return absl::OkStatus();
  if (absl::Status st =
          CudaStatus(cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), what);
      !st.ok()) {
    return st;
  }
  done.fetch_or(bit, std::memory_order_release);
  return absl::OkStatus();
}

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_CUDA_CHECK_CUH_
