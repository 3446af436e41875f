#ifndef MOEMESH_CORE_KERNELS_CPU_NORM_H_
#define MOEMESH_CORE_KERNELS_CPU_NORM_H_

namespace moemesh {

// RMSNorm of `rows` vectors of length `n` (stride `n`), in place allowed:
// y = weight * (x / sqrt(mean(x^2) + eps)), as transformers computes it.
void RmsNorm(const float* x, const float* weight, int rows, int n, float eps, float* y);

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CPU_NORM_H_
