#ifndef MOEMESH_CORE_TENSOR_REL_ERROR_H_
#define MOEMESH_CORE_TENSOR_REL_ERROR_H_

#include <algorithm>
#include <cmath>
#include <vector>

namespace moemesh {

// ||got - want|| / ||want|| (Euclidean norms), the measure the numerical
// tests state their tolerances in. NaN-safe: a non-finite value in `got`
// gives infinity, so it fails every tolerance.
inline double RelError(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    const double d = static_cast<double>(got[i]) - want[i];
    num += d * d;
    den += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

}  // namespace moemesh

#endif  // MOEMESH_CORE_TENSOR_REL_ERROR_H_
