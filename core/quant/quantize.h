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
};

// "none", "int8", "int4" (groups of 128, symmetric), "int4:G" and
// "int4:G:asym" (G 32, 64 or 128). INVALID_ARGUMENT says what is accepted.
absl::StatusOr<QuantSpec> ParseQuantSpec(absl::string_view text);
// The spelling ParseQuantSpec takes back.
std::string QuantSpecName(const QuantSpec& spec);

// A quantized matrix's codes, scales and biases, owned; view() is what
// the kernels (Linear) take.
class QuantizedMatrix {
 public:
  const MatrixView& view() const { return view_; }

 private:
  friend absl::StatusOr<std::shared_ptr<const QuantizedMatrix>> Quantize(const MatrixView&, const QuantSpec&);
  std::vector<uint8_t> codes_;
  std::vector<float> scales_, biases_;
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

}  // namespace moemesh

#endif  // MOEMESH_CORE_QUANT_QUANTIZE_H_
