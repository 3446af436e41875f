#ifndef MOEMESH_CORE_KERNELS_CUDA_NORM_H_
#define MOEMESH_CORE_KERNELS_CUDA_NORM_H_

#include "absl/status/status.h"
#include "core/kernels/cuda/cuda_runtime_util.h"

namespace moemesh {

// RMSNorm on the GPU, as core/kernels/cpu/norm.h: y = weight * x /
// sqrt(mean(x^2) + eps) for `rows` rows of `n` floats; device pointers; in
// place allowed. One block per row, fp32 throughout. Enqueued on `stream`.
absl::Status RmsNormCuda(const float* x, const float* weight, int rows, int n, float eps, float* y,
                         CudaStream stream);

// The residual and the next norm in one pass: hidden += delta, then
// y = RmsNorm(hidden) as RmsNormCuda (`y` apart from both).
absl::Status AddRmsNormCuda(float* hidden, const float* delta, const float* weight, int rows, int n, float eps,
                            float* y, CudaStream stream);

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_NORM_H_
