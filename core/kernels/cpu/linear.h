#ifndef MOEMESH_CORE_KERNELS_CPU_LINEAR_H_
#define MOEMESH_CORE_KERNELS_CPU_LINEAR_H_

#include "core/tensor/matrix_view.h"

namespace moemesh {

class ThreadPool;

// The instruction sets Linear's kernels come in, in order.
enum class LinearIsa { kPortable, kAvx2, kAvx512 };
// The widest this CPU runs (AVX2 needs FMA and F16C too).
LinearIsa BestLinearIsa();

// y[m, w.rows] = x[m, w.cols] * w^T (+ bias[w.rows] when not null).
// Weights may be F32, F16, BF16, or int8 / int4 codes (MatrixView::quant:
// each weight (code - zero) * scale in fp32); arithmetic is fp32 with fp32
// accumulation. `x` and `y` must not overlap. `pool` may be null.
// Uses the widest kernels the CPU runs (BestLinearIsa): AVX-512 for few
// rows of 16-bit weights (decode), AVX2/FMA, or a portable loop.
void Linear(const float* x, int m, const MatrixView& w, const float* bias, float* y, ThreadPool* pool);
// With the kernels of `isa` (at most BestLinearIsa()), for tests that hold
// each variant to the others.
void Linear(const float* x, int m, const MatrixView& w, const float* bias, float* y, ThreadPool* pool,
            LinearIsa isa);

// Copies row `row` of `w` to `out` as floats (embedding lookup), a
// quantized row as the kernels see it.
void GatherRow(const MatrixView& w, int row, float* out);

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CPU_LINEAR_H_
