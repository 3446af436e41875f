#ifndef MOEMESH_CORE_QUANT_QUANTIZE_H_
#define MOEMESH_CORE_QUANT_QUANTIZE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/tensor/matrix_view.h"

namespace moemesh {

// Weight-only quantization: how a matrix is quantized at load.
struct QuantSpec {
  QuantKind kind = QuantKind::kNone;
  int group = 0;          // int4: columns a scale covers, 32, 64 or 128; int8: the whole row
  bool symmetric = true;  // int4: zero point 8 and scale absmax / 7; else the group's range in 15 steps
  // int4: the kernels multiply by int8 inputs (MatrixView::int8_inputs): a
  // run-time choice, not part of a checkpoint's format.
  bool int8_inputs = false;
};

// "none", "int8", "int4" (groups of 128, symmetric), "int4:G" and
// "int4:G:asym" (G 32, 64 or 128), an int4 form with ":q8" after it for
// int8 inputs ("int4:128:q8"). INVALID_ARGUMENT says what is accepted.
absl::StatusOr<QuantSpec> ParseQuantSpec(absl::string_view text);
// The spelling ParseQuantSpec takes back.
std::string QuantSpecName(const QuantSpec& spec);

struct PackedInt4;

// A quantized matrix's codes, scales and biases (and, for an act-order
// GPTQ layer, the order of its inputs), owned, or a layer dequantized to
// BF16; view() is what the kernels (Linear) take.
class QuantizedMatrix {
 public:
  const MatrixView& view() const { return view_; }

 private:
  friend absl::StatusOr<std::shared_ptr<const QuantizedMatrix>> Quantize(const MatrixView&, const QuantSpec&);
  friend absl::StatusOr<std::shared_ptr<const QuantizedMatrix>> FromPackedInt4(const PackedInt4&);
  friend absl::StatusOr<std::shared_ptr<const QuantizedMatrix>> FromFp8Blocks(int, int, int, int, const void*,
                                                                             const void*, DType);
  friend absl::StatusOr<std::shared_ptr<const QuantizedMatrix>> FromActOrder(const PackedInt4&, const int32_t*);
  // FromPackedInt4's work, the result still open to FromActOrder.
  static absl::StatusOr<std::shared_ptr<QuantizedMatrix>> PackInt4(const PackedInt4& p);
  std::vector<uint8_t> codes_;
  std::vector<float> scales_, biases_;
  std::vector<int32_t> input_order_;
  MatrixView view_;
};

// Quantizes an F32, F16 or BF16 matrix (the weights widened to float
// first): int8 with one scale a row (absmax / 127, codes -127..127), or
// int4 with a scale and zero point a group of columns (symmetric: zero 8
// and scale absmax / 7; else the group's range, zero included, in 15
// steps), rounding to nearest even. A group of zeros gets scale 0. The
// weights the kernels then see are MatrixView's (code * scale, or
// code * scale - zero * scale fused), GatherRow's.
absl::StatusOr<std::shared_ptr<const QuantizedMatrix>> Quantize(const MatrixView& w, const QuantSpec& spec);

// One 4-bit linear layer of a GPTQ or AWQ checkpoint, as stored, for a
// matrix of `rows` outputs and `cols` inputs (groups of `group` inputs).
struct PackedInt4 {
  enum class Layout {
    kGptq,  // qweight [cols / 8, rows]: nibble j of word (i / 8, o) is input i = 8 (i / 8) + j of output o
    kAwq,   // qweight [cols, rows / 8]: nibble j of word (i, p) is output 8 p + {0, 2, 4, 6, 1, 3, 5, 7}[j]
  };
  Layout layout = Layout::kGptq;
  int rows = 0, cols = 0, group = 0;
  bool gptq_v2 = false;           // GPTQ's v1 format stores each zero point minus one
  const int32_t* qweight = nullptr;
  const int32_t* qzeros = nullptr;  // [cols / group, rows / 8], outputs packed as qweight's (AWQ: its order)
  const void* scales = nullptr;     // [cols / group, rows]
  DType scales_dtype = DType::kF16;
};

// The layer in moemesh's int4 layout: each weight (code - zero) * scale as
// the format defines it (MatrixView: code * scale + bias, bias = -zero *
// scale). INVALID_ARGUMENT for sizes the layout cannot hold (rows and
// packed dimensions multiples of 8, cols a multiple of the group, groups
// of 32, 64 or 128).
absl::StatusOr<std::shared_ptr<const QuantizedMatrix>> FromPackedInt4(const PackedInt4& packed);

// An act-order GPTQ layer (desc_act: input i in group g_idx[i], groups
// that are not runs of inputs, which the int4 kernels need). Where every
// group holds `group` inputs (as GPTQ makes them), the layer stays 4-bit
// with its columns in the groups' order and MatrixView::input_order saying
// which input each takes: the weights exactly as FromPackedInt4 reads
// them. Otherwise its weights, (code - zero) * scale, rounded to BF16 (a
// dense matrix, BF16's memory). GPTQ layout only; INVALID_ARGUMENT for a
// group outside [0, cols / group) or sizes FromPackedInt4 refuses.
absl::StatusOr<std::shared_ptr<const QuantizedMatrix>> FromActOrder(const PackedInt4& p, const int32_t* g_idx);

// A block-scaled FP8 matrix as DeepSeek-V3's checkpoints store it: `codes`
// [rows, cols] E4M3 bytes (used in place: they must outlive the result),
// `scales` [ceil(rows / block_rows), ceil(cols / block_cols)] (weight_scale_inv,
// F32 or BF16), each weight code * scale of its block. INVALID_ARGUMENT for
// block columns not a power of two of 16 or more, or scales not finite.
absl::StatusOr<std::shared_ptr<const QuantizedMatrix>> FromFp8Blocks(int rows, int cols, int block_rows,
                                                                     int block_cols, const void* codes,
                                                                     const void* scales, DType scales_dtype);

// FromFp8Blocks' inverse, as DeepSeek-V3's checkpoints are made: each
// block's scale its largest magnitude / 448 (0 for a block of zeros), each
// weight / its scale rounded to the nearest E4M3 (ties to even). `w` is
// unquantized (F32, BF16 or F16); INVALID_ARGUMENT for non-finite weights
// or bad blocks.
struct Fp8BlockTensors {
  std::vector<uint8_t> codes;  // [rows, cols]
  std::vector<float> scales;   // [ceil(rows / block_rows), ceil(cols / block_cols)] (weight_scale_inv)
};
absl::StatusOr<Fp8BlockTensors> ToFp8Blocks(const MatrixView& w, int block_rows, int block_cols);

// An int4 matrix (Quantize's) in a GPTQ or AWQ layer's tensors, as
// FromPackedInt4 reads them back: scales in F16, zero points as stored
// (GPTQ: v1's zero minus one when `gptq_v2` is false, which cannot hold a
// zero point of 0: INVALID_ARGUMENT then; write v2 or AWQ for those).
struct PackedInt4Tensors {
  std::vector<int32_t> qweight, qzeros;
  std::vector<uint16_t> scales;  // F16
};
absl::StatusOr<PackedInt4Tensors> PackInt4(const MatrixView& w, PackedInt4::Layout layout, bool gptq_v2);

}  // namespace moemesh

#endif  // MOEMESH_CORE_QUANT_QUANTIZE_H_
