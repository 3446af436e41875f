#include "core/kernels/cpu/norm.h"

#include <cmath>

namespace moemesh {

void RmsNorm(const float* x, const float* weight, int rows, int n, float eps, float* y) {
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + static_cast<long>(r) * n;
    float* yr = y + static_cast<long>(r) * n;
    double ss = 0;
    for (int i = 0; i < n; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    float variance = static_cast<float>(ss / n);
    float inv = 1.0f / std::sqrt(variance + eps);
    for (int i = 0; i < n; ++i) yr[i] = weight[i] * (xr[i] * inv);
  }
}

}  // namespace moemesh
