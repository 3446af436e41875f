#ifndef MOEMESH_CORE_KERNELS_CPU_LINEAR_H_
#define MOEMESH_CORE_KERNELS_CPU_LINEAR_H_

#include "core/tensor/matrix_view.h"

namespace moemesh {

class ThreadPool;

// y[m, w.rows] = x[m, w.cols] * w^T (+ bias[w.rows] when not null).
// Weights may be F32, F16 or BF16; arithmetic is fp32 with fp32
// accumulation. `x` and `y` must not overlap. `pool` may be null.
// Uses AVX2/FMA when the CPU has them, a portable loop otherwise.
void Linear(const float* x, int m, const MatrixView& w, const float* bias, float* y,
            ThreadPool* pool);

// Copies row `row` of `w` to `out` as floats (embedding lookup).
void GatherRow(const MatrixView& w, int row, float* out);

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CPU_LINEAR_H_
