#ifndef MOEMESH_CORE_TENSOR_MATRIX_VIEW_H_
#define MOEMESH_CORE_TENSOR_MATRIX_VIEW_H_

#include <cstddef>
#include <cstdint>

#include "core/tensor/dtype.h"

namespace moemesh {

// How a matrix's weights are stored when quantized (core/quant/quantize.h).
enum class QuantKind : uint8_t {
  kNone,
  // int8 codes, a row of `cols` bytes; one scale a row: the weight at (r, c)
  // is code * scale, and a row's product is scale * sum(x * code).
  kInt8,
  // The weight at (r, c) is code * scale + bias (one fused multiply-add),
  // with the scale and bias of its row's group of columns; bias is
  // -zero * scale for a zero point in 0..15.
  // 4-bit codes 0..15, a row in blocks of 32 columns of 16 bytes each: byte
  // j of a block holds column j in its low nibble and column j + 16 in its
  // high one (a vector of 16 columns is one shift or mask of 16 bytes); the
  // last block is padded with zero codes.
  kInt4,
  // FP8 E4M3 codes (dtype kF8E4M3), a row of `cols` bytes; the weight is
  // the code's value * scale, one scale a block of rows and `group`
  // columns (DeepSeek-V3's weight_scale_inv, given per row here); bias 0.
  kFp8,
};

// Code `col` (0..15) of a kInt4 row, and writing it into a row of zeros:
// the one place the int4 layout is spelled out.
inline int Int4CodeAt(const uint8_t* row, int col) {
  const uint8_t b = row[(col >> 5) * 16 + (col & 15)];
  return (col & 16) ? b >> 4 : b & 15;
}
inline void PutInt4Code(uint8_t* row, int col, int code) {
  row[(col >> 5) * 16 + (col & 15)] |= static_cast<uint8_t>((col & 16) ? code << 4 : code);
}

// A non-owning row-major [rows, cols] matrix of F32, F16 or BF16 elements,
// or of quantized codes (dtype kI8, `quant` set) with their groups' scales
// and biases.
struct MatrixView {
  DType dtype = DType::kF32;
  int rows = 0;
  int cols = 0;
  const void* data = nullptr;
  QuantKind quant = QuantKind::kNone;
  int group = 0;                  // columns a scale covers (a power of two; int8: any, one group a row)
  const float* scales = nullptr;  // [rows, groups()]
  const float* biases = nullptr;  // [rows, groups()]; int8: zeros
  // Or null: column c of the weights takes input input_order[c] (an
  // act-order GPTQ layer, its inputs put in their groups' order so that the
  // groups are runs of columns). Linear and GatherRow apply it.
  const int32_t* input_order = nullptr;
  // Int4 only: Linear multiplies by int8 inputs instead of fp32 ones, each
  // input row quantized per 32 columns (scale absmax / 127) and the codes'
  // products summed as integers (AVX-512 VNNI where the CPU has it), as
  // llama.cpp's Q4 x Q8 products: about twice the fp32 kernels' speed on a
  // core, at the inputs' rounding (each off by at most its block's largest
  // / 254). A row's result still depends neither on its batch nor on the
  // CPU's instruction sets. Groups of 32 columns or more.
  bool int8_inputs = false;
  // BF16 weights only: Linear rounds the inputs to bf16 and sums products
  // of two bf16s in fp32, as a GPU does, with AVX-512 BF16 where the CPU has
  // it (about twice the fp32 kernels' rate in prefill; LinearBf16Inputs,
  // core/kernels/cpu/bf16_inputs.h). Each input is then off by at most 2^-9
  // of itself.
  bool bf16_inputs = false;

  bool empty() const { return data == nullptr; }
  bool quantized() const { return quant != QuantKind::kNone; }
  int groups() const { return quantized() ? (cols + group - 1) / group : 0; }
  // Bytes of one row's weights (codes, for a quantized matrix).
  size_t row_bytes() const {
    if (quant == QuantKind::kInt4) return static_cast<size_t>((cols + 31) / 32) * 16;
    return static_cast<size_t>(cols) * DTypeSize(dtype);
  }
  // The bytes a product with it reads: the weights, and the scales and
  // biases of a quantized matrix.
  size_t nbytes() const {
    return static_cast<size_t>(rows) * (row_bytes() + (quantized() ? 2 * groups() * sizeof(float) : 0));
  }
  // Rows [first, first + count) as a matrix of their own.
  MatrixView RowSlice(int first, int count) const {
    MatrixView m = *this;
    m.rows = count;
    m.data = static_cast<const char*>(data) + static_cast<size_t>(first) * row_bytes();
    if (quantized()) {
      m.scales = scales + static_cast<size_t>(first) * groups();
      m.biases = biases + static_cast<size_t>(first) * groups();
    }
    return m;
  }
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_TENSOR_MATRIX_VIEW_H_
