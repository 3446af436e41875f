#ifndef MOEMESH_CORE_KERNELS_CUDA_CUBLAS_LOADER_CUH_
#define MOEMESH_CORE_KERNELS_CUDA_CUBLAS_LOADER_CUH_

// For .cu files only: cuBLAS, loaded at run time.
//
// Why not link it: libcublasLt has about 94 KB of thread-local storage, and
// a library linked at start puts its TLS in every thread's static TLS block,
// which glibc carves out of each thread's stack. The metrics server's
// civetweb threads ask for 100 KB stacks, so with cuBLAS linked they cannot
// start at all (pthread_create: EINVAL). Loaded with dlopen, cuBLAS's TLS is
// dynamic and allocated only in the threads that use it. Processes that
// never run a GEMM never load it.

#include <cublas_v2.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moemesh {

// The cuBLAS entry points moemesh uses.
struct CublasApi {
  cublasStatus_t (*create)(cublasHandle_t*);
  cublasStatus_t (*destroy)(cublasHandle_t);
  cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t);
  cublasStatus_t (*set_workspace)(cublasHandle_t, void*, size_t);
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                            const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                            cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
  cublasStatus_t (*gemm_strided_batched_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                            const void*, const void*, cudaDataType, int, long long, const void*,
                                            cudaDataType, int, long long, const void*, void*, cudaDataType, int,
                                            long long, int, cublasComputeType_t, cublasGemmAlgo_t);
  cublasStatus_t (*gemm_batched_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                                    const void* const[], cudaDataType, int, const void* const[], cudaDataType, int,
                                    const void*, void* const[], cudaDataType, int, int, cublasComputeType_t,
                                    cublasGemmAlgo_t);
  const char* (*status_name)(cublasStatus_t);
  const char* (*status_string)(cublasStatus_t);

  // An error naming `what` and cuBLAS's words for `s`; OK for success.
  absl::Status Check(cublasStatus_t s, const char* what) const;
};

// Loads libcublas.so.<major> once (thread-safe); FAILED_PRECONDITION, saying
// what to install, when it is not there.
absl::StatusOr<const CublasApi*> LoadCublas();

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_CUBLAS_LOADER_CUH_
