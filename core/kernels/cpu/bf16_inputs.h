#ifndef MOEMESH_CORE_KERNELS_CPU_BF16_INPUTS_H_
#define MOEMESH_CORE_KERNELS_CPU_BF16_INPUTS_H_

#include "core/kernels/cpu/linear.h"
#include "core/tensor/matrix_view.h"

namespace moemesh {

class ThreadPool;

// Whether this CPU has AVX-512 BF16 (vdpbf16ps), which Linear uses for
// BF16 weights by bf16 inputs.
bool HasAvx512Bf16();

// Linear for BF16 weights by bf16 inputs (MatrixView::bf16_inputs): each
// input rounded to bf16 (to nearest even), the products of two bf16s (exact
// in fp32) summed in fp32, as a GPU's tensor cores take them. With `isa`
// kAvx512 on a CPU with AVX-512 BF16, vdpbf16ps adds two products a lane
// (twice the FMA's work an instruction, and no widening of the weights);
// each (input row, weight row) sums its 32-column chunks into four
// accumulators, chunk j into j % 4, whatever the batch, so a row's result
// does not depend on it. Otherwise the rounded inputs go through the fp32
// kernels of `isa`: the same products, summed in their order (results move
// by float rounding between the two). Called by Linear.
void LinearBf16Inputs(const float* x, int m, const MatrixView& w, const float* bias, float* y, ThreadPool* pool,
                      LinearIsa isa);

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CPU_BF16_INPUTS_H_
