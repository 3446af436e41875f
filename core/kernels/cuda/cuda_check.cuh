#ifndef MOEMESH_CORE_KERNELS_CUDA_CUDA_CHECK_CUH_
#define MOEMESH_CORE_KERNELS_CUDA_CUDA_CHECK_CUH_

// For .cu files only: CUDA errors as absl::Status.

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace moemesh {

inline absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorName(e), ": ", cudaGetErrorString(e)));
}

// The status of the last kernel launch.
inline absl::Status LaunchStatus(const char* kernel) { return CudaStatus(cudaGetLastError(), kernel); }

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_CUDA_CHECK_CUH_
