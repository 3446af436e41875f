#include "core/experts/ffn.h"

#include <vector>

#include "core/kernels/cpu/activation.h"
#include "core/kernels/cpu/linear.h"

namespace moemesh {

void RunFfn(const FfnWeights& w, const float* x, int m, float* out, ThreadPool* pool) {
  const int width = w.gate.rows;
  std::vector<float> g(static_cast<size_t>(m) * width), u(g.size());
  Linear(x, m, w.gate, nullptr, g.data(), pool);
  Linear(x, m, w.up, nullptr, u.data(), pool);
  SiluMul(g.data(), u.data(), static_cast<int>(g.size()), g.data());
  Linear(g.data(), m, w.down, nullptr, out, pool);
}

}  // namespace moemesh
