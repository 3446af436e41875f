#ifndef MOEMESH_CORE_EXPERTS_FFN_H_
#define MOEMESH_CORE_EXPERTS_FFN_H_

#include "core/model/weights.h"

namespace moemesh {

class ThreadPool;

// out[m, hidden] = down(silu(gate x) * up x) for m rows of x. `out` must not
// alias `x`.
void RunFfn(const FfnWeights& w, const float* x, int m, float* out, ThreadPool* pool);

}  // namespace moemesh

#endif  // MOEMESH_CORE_EXPERTS_FFN_H_
