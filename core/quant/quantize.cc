#include "core/quant/quantize.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/common/status_macros.h"

namespace moemesh {

absl::StatusOr<QuantSpec> ParseQuantSpec(absl::string_view text) {
  std::vector<absl::string_view> parts = absl::StrSplit(text, ':');
  QuantSpec spec;
  auto bad = [&] {
    return absl::InvalidArgumentError(absl::StrCat("quantization \"", text,
                                                   "\": use none, int8, int4, int4:G or int4:G:asym (G: 32, 64 "
                                                   "or 128 columns a scale), an int4 form with :q8 at the end "
                                                   "for int8 inputs"));
  };
  if (parts.size() > 1 && parts.back() == "q8") {  // int4 by int8 inputs
    if (parts[0] != "int4") return bad();
    spec.int8_inputs = true;
    parts.pop_back();
  }
  if (parts[0] == "none" || parts[0].empty()) return parts.size() == 1 ? absl::StatusOr<QuantSpec>(spec) : bad();
  if (parts[0] == "int8") {
    if (parts.size() != 1) return bad();
    spec.kind = QuantKind::kInt8;
    return spec;
  }
  if (parts[0] != "int4" || parts.size() > 3) return bad();
  spec.kind = QuantKind::kInt4;
  spec.group = 128;
  if (parts.size() >= 2 && (!absl::SimpleAtoi(parts[1], &spec.group) ||
                            (spec.group != 32 && spec.group != 64 && spec.group != 128))) {
    return bad();
  }
  if (parts.size() == 3) {
    if (parts[2] != "asym" && parts[2] != "sym") return bad();
    spec.symmetric = parts[2] == "sym";
  }
  return spec;
}

std::string QuantSpecName(const QuantSpec& spec) {
  switch (spec.kind) {
    case QuantKind::kNone:
      return "none";
    case QuantKind::kInt8:
      return "int8";
    case QuantKind::kInt4:
      return absl::StrCat("int4:", spec.group, spec.symmetric ? "" : ":asym", spec.int8_inputs ? ":q8" : "");
    case QuantKind::kFp8:
      return "fp8";  // read from checkpoints only
  }
  return "none";
}

absl::StatusOr<std::shared_ptr<const QuantizedMatrix>> Quantize(const MatrixView& w, const QuantSpec& spec) {
  if (w.quantized() || (w.dtype != DType::kF32 && w.dtype != DType::kF16 && w.dtype != DType::kBF16)) {
    return absl::InvalidArgumentError(absl::StrCat("only F32, F16 or BF16 weights are quantized, not ",
                                                   w.quantized() ? "quantized ones" : DTypeName(w.dtype)));
  }
  if (spec.kind == QuantKind::kNone) return absl::InvalidArgumentError("no quantization asked for");
  if (spec.kind == QuantKind::kInt4 && (spec.group < 32 || (spec.group & (spec.group - 1)) != 0)) {
    return absl::InvalidArgumentError(absl::StrCat("int4 groups of ", spec.group, " columns: 32, 64 or 128"));
  }
  auto q = std::shared_ptr<QuantizedMatrix>(new QuantizedMatrix);
  MatrixView& v = q->view_;
  v = MatrixView{DType::kI8, w.rows, w.cols, nullptr};
  v.quant = spec.kind;
  v.group = spec.kind == QuantKind::kInt8 ? std::max(w.cols, 1) : spec.group;
  v.int8_inputs = spec.kind == QuantKind::kInt4 && spec.int8_inputs;
  const int groups = v.groups(), cols = w.cols;
  q->codes_.assign(static_cast<size_t>(w.rows) * v.row_bytes(), 0);
  q->scales_.assign(static_cast<size_t>(w.rows) * groups, 0.f);
  q->biases_.assign(static_cast<size_t>(w.rows) * groups, 0.f);
  std::vector<float> row(cols);
  const size_t elem = DTypeSize(w.dtype);
  for (int r = 0; r < w.rows; ++r) {
    ConvertToF32(w.dtype, static_cast<const char*>(w.data) + static_cast<size_t>(r) * cols * elem, cols, row.data());
    for (int c = 0; c < cols; ++c) {
      if (!std::isfinite(row[c])) {
        return absl::InvalidArgumentError(absl::StrCat("weight (", r, ", ", c, ") is ", row[c], ": not quantized"));
      }
    }
    uint8_t* codes = q->codes_.data() + static_cast<size_t>(r) * v.row_bytes();
    for (int g = 0; g < groups; ++g) {
      const int c0 = g * v.group, c1 = std::min(cols, c0 + v.group);
      float lo = 0, hi = 0;  // the range holds zero (as GPTQ's)
      for (int c = c0; c < c1; ++c) lo = std::min(lo, row[c]), hi = std::max(hi, row[c]);
      float scale = 0, zero = 0;
      int qmin = 0, qmax = 15;
      if (spec.kind == QuantKind::kInt8) {
        scale = std::max(-lo, hi) / 127.f;
        qmin = -127, qmax = 127;
      } else if (spec.symmetric) {
        scale = std::max(-lo, hi) / 7.f;
        zero = 8;
      } else {
        scale = hi / 15.f - lo / 15.f;  // (hi - lo) / 15 may overflow where they are near float's range
        zero = scale > 0 ? std::clamp(std::nearbyint(-lo / scale), 0.f, 15.f) : 0.f;
      }
      if (!std::isfinite(zero * scale)) {  // |w| near float's limit: 8 steps of absmax / 7 overflow
        return absl::InvalidArgumentError(absl::StrCat("row ", r, ", columns ", c0, "..", c1 - 1, ": weights up to ",
                                                       std::max(-lo, hi), " overflow ", QuantSpecName(spec),
                                                       "'s zero point; use int4:", spec.group, ":asym or int8"));
      }
      q->scales_[static_cast<size_t>(r) * groups + g] = scale;
      q->biases_[static_cast<size_t>(r) * groups + g] = -zero * scale;
      for (int c = c0; c < c1; ++c) {
        const float code = scale > 0 ? std::nearbyint(row[c] / scale) + zero : zero;
        const int k = static_cast<int>(std::clamp(code, static_cast<float>(qmin), static_cast<float>(qmax)));
        if (spec.kind == QuantKind::kInt8) {
          codes[c] = static_cast<uint8_t>(static_cast<int8_t>(k));
        } else {
          PutInt4Code(codes, c, k);
        }
      }
    }
  }
  v.data = q->codes_.data();
  v.scales = q->scales_.data();
  v.biases = q->biases_.data();
  return std::shared_ptr<const QuantizedMatrix>(std::move(q));
}

absl::StatusOr<std::shared_ptr<const QuantizedMatrix>> FromPackedInt4(const PackedInt4& p) {
  MM_ASSIGN_OR_RETURN(std::shared_ptr<QuantizedMatrix> q, QuantizedMatrix::PackInt4(p));
  return std::shared_ptr<const QuantizedMatrix>(std::move(q));
}

absl::StatusOr<std::shared_ptr<QuantizedMatrix>> QuantizedMatrix::PackInt4(const PackedInt4& p) {
  const bool gptq = p.layout == PackedInt4::Layout::kGptq;
  if (p.rows <= 0 || p.cols <= 0 || p.rows % 8 != 0 || (gptq && p.cols % 8 != 0) ||
      (p.group != 32 && p.group != 64 && p.group != 128) || p.cols % p.group != 0) {
    return absl::InvalidArgumentError(absl::StrCat("a 4-bit ", gptq ? "GPTQ" : "AWQ", " layer of ", p.rows,
                                                   " outputs and ", p.cols, " inputs in groups of ", p.group,
                                                   ": outputs must be a multiple of 8 and inputs of the group "
                                                   "(32, 64 or 128)"));
  }
  auto q = std::shared_ptr<QuantizedMatrix>(new QuantizedMatrix);
  MatrixView& v = q->view_;
  v = MatrixView{DType::kI8, p.rows, p.cols, nullptr};
  v.quant = QuantKind::kInt4;
  v.group = p.group;
  const int groups = v.groups(), packed_rows = p.rows / 8;
  q->codes_.assign(static_cast<size_t>(p.rows) * v.row_bytes(), 0);
  q->scales_.resize(static_cast<size_t>(p.rows) * groups);
  q->biases_.resize(q->scales_.size());
  // AWQ's nibble of each of a word's 8 outputs.
  static constexpr int kAwqNibble[8] = {0, 4, 1, 5, 2, 6, 3, 7};
  auto nibble = [](int32_t word, int j) { return (static_cast<uint32_t>(word) >> (4 * j)) & 15u; };
  std::vector<float> group_scales(p.rows);
  for (int g = 0; g < groups; ++g) {
    ConvertToF32(p.scales_dtype,
                 static_cast<const char*>(p.scales) + static_cast<size_t>(g) * p.rows * DTypeSize(p.scales_dtype),
                 p.rows, group_scales.data());
    for (int o = 0; o < p.rows; ++o) {
      const int32_t word = p.qzeros[static_cast<size_t>(g) * packed_rows + o / 8];
      const float zero = static_cast<float>(nibble(word, gptq ? o % 8 : kAwqNibble[o % 8])) +
                         (gptq && !p.gptq_v2 ? 1.0f : 0.0f);
      const float scale = group_scales[o];
      if (!std::isfinite(scale)) {
        return absl::InvalidArgumentError(absl::StrCat("scale of output ", o, ", group ", g, " is ", scale));
      }
      q->scales_[static_cast<size_t>(o) * groups + g] = scale;
      q->biases_[static_cast<size_t>(o) * groups + g] = -zero * scale;
    }
  }
  for (int o = 0; o < p.rows; ++o) {
    uint8_t* codes = q->codes_.data() + static_cast<size_t>(o) * v.row_bytes();
    for (int i = 0; i < p.cols; ++i) {
      const uint32_t k = gptq ? nibble(p.qweight[static_cast<size_t>(i / 8) * p.rows + o], i % 8)
                              : nibble(p.qweight[static_cast<size_t>(i) * packed_rows + o / 8], kAwqNibble[o % 8]);
      PutInt4Code(codes, i, static_cast<int>(k));
    }
  }
  v.data = q->codes_.data();
  v.scales = q->scales_.data();
  v.biases = q->biases_.data();
  return q;
}

absl::StatusOr<std::shared_ptr<const QuantizedMatrix>> FromActOrder(const PackedInt4& p, const int32_t* g_idx) {
  if (p.layout != PackedInt4::Layout::kGptq || p.rows <= 0 || p.cols <= 0 || p.rows % 8 != 0 || p.cols % 8 != 0 ||
      (p.group != 32 && p.group != 64 && p.group != 128) || p.cols % p.group != 0) {
    return absl::InvalidArgumentError(absl::StrCat("an act-order GPTQ layer of ", p.rows, " outputs and ", p.cols,
                                                   " inputs in groups of ", p.group,
                                                   ": both multiples of 8, inputs of the group (32, 64 or 128)"));
  }
  const int groups = p.cols / p.group, packed_rows = p.rows / 8;
  for (int i = 0; i < p.cols; ++i) {
    if (g_idx[i] < 0 || g_idx[i] >= groups) {
      return absl::InvalidArgumentError(absl::StrCat("g_idx puts input ", i, " in group ", g_idx[i], " of ", groups));
    }
  }
  // The inputs sorted by group: if every group holds `group` of them, the
  // groups become runs of columns and the layer stays 4-bit.
  std::vector<int32_t> order(p.cols);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return g_idx[a] < g_idx[b]; });
  bool runs = true;
  for (int c = 0; c < p.cols && runs; ++c) runs = g_idx[order[c]] == c / p.group;
  if (runs) {
    std::vector<int32_t> qweight(static_cast<size_t>(p.cols / 8) * p.rows, 0);  // GPTQ's layout, inputs reordered
    for (int c = 0; c < p.cols; ++c) {
      const int i = order[c];
      for (int o = 0; o < p.rows; ++o) {
        const uint32_t code = (static_cast<uint32_t>(p.qweight[static_cast<size_t>(i / 8) * p.rows + o]) >> (4 * (i % 8))) & 15u;
        qweight[static_cast<size_t>(c / 8) * p.rows + o] |= static_cast<int32_t>(code << (4 * (c % 8)));
      }
    }
    PackedInt4 runs_of_inputs = p;
    runs_of_inputs.qweight = qweight.data();
    MM_ASSIGN_OR_RETURN(std::shared_ptr<QuantizedMatrix> q, QuantizedMatrix::PackInt4(runs_of_inputs));
    q->input_order_ = std::move(order);
    q->view_.input_order = q->input_order_.data();
    return std::shared_ptr<const QuantizedMatrix>(std::move(q));
  }
  // Each group's scales and zero points, [group][output].
  std::vector<float> scales(static_cast<size_t>(groups) * p.rows), zeros(scales.size());
  for (int g = 0; g < groups; ++g) {
    ConvertToF32(p.scales_dtype,
                 static_cast<const char*>(p.scales) + static_cast<size_t>(g) * p.rows * DTypeSize(p.scales_dtype),
                 p.rows, scales.data() + static_cast<size_t>(g) * p.rows);
    for (int o = 0; o < p.rows; ++o) {
      const uint32_t word = static_cast<uint32_t>(p.qzeros[static_cast<size_t>(g) * packed_rows + o / 8]);
      zeros[static_cast<size_t>(g) * p.rows + o] = static_cast<float>((word >> (4 * (o % 8))) & 15u) +
                                                   (p.gptq_v2 ? 0.0f : 1.0f);  // v1 stores zero - 1
      if (!std::isfinite(scales[static_cast<size_t>(g) * p.rows + o])) {
        return absl::InvalidArgumentError(absl::StrCat("scale of output ", o, ", group ", g, " is not finite"));
      }
    }
  }
  auto q = std::shared_ptr<QuantizedMatrix>(new QuantizedMatrix);
  q->codes_.resize(static_cast<size_t>(p.rows) * p.cols * sizeof(uint16_t));
  uint16_t* w = reinterpret_cast<uint16_t*>(q->codes_.data());
  for (int o = 0; o < p.rows; ++o) {
    for (int i = 0; i < p.cols; ++i) {
      const uint32_t code = (static_cast<uint32_t>(p.qweight[static_cast<size_t>(i / 8) * p.rows + o]) >> (4 * (i % 8))) & 15u;
      const size_t at = static_cast<size_t>(g_idx[i]) * p.rows + o;
      // As MatrixView reads int4: code * scale + bias, bias = -zero * scale.
      w[static_cast<size_t>(o) * p.cols + i] = F32ToBf16(std::fma(static_cast<float>(code), scales[at], -zeros[at] * scales[at]));
    }
  }
  q->view_ = MatrixView{DType::kBF16, p.rows, p.cols, q->codes_.data()};
  return std::shared_ptr<const QuantizedMatrix>(std::move(q));
}

absl::StatusOr<std::shared_ptr<const QuantizedMatrix>> FromFp8Blocks(int rows, int cols, int block_rows,
                                                                     int block_cols, const void* codes,
                                                                     const void* scales, DType scales_dtype) {
  if (rows <= 0 || cols <= 0 || block_rows <= 0 || block_cols < 16 || (block_cols & (block_cols - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("FP8 blocks of ", block_rows, " x ", block_cols,
                                                   " (block columns: a power of two, 16 or more)"));
  }
  auto q = std::shared_ptr<QuantizedMatrix>(new QuantizedMatrix);
  MatrixView& v = q->view_;
  v = MatrixView{DType::kF8E4M3, rows, cols, codes};
  v.quant = QuantKind::kFp8;
  v.group = block_cols;
  const int groups = v.groups(), block_grid_rows = (rows + block_rows - 1) / block_rows;
  std::vector<float> grid(static_cast<size_t>(block_grid_rows) * groups);
  ConvertToF32(scales_dtype, scales, grid.size(), grid.data());
  q->scales_.resize(static_cast<size_t>(rows) * groups);
  q->biases_.assign(q->scales_.size(), 0.f);
  for (int r = 0; r < rows; ++r) {
    for (int g = 0; g < groups; ++g) {
      const float s = grid[static_cast<size_t>(r / block_rows) * groups + g];
      if (!std::isfinite(s)) {
        return absl::InvalidArgumentError(absl::StrCat("block (", r / block_rows, ", ", g, ")'s scale is ", s));
      }
      q->scales_[static_cast<size_t>(r) * groups + g] = s;
    }
  }
  v.scales = q->scales_.data();
  v.biases = q->biases_.data();
  return std::shared_ptr<const QuantizedMatrix>(std::move(q));
}

absl::StatusOr<Fp8BlockTensors> ToFp8Blocks(const MatrixView& w, int block_rows, int block_cols) {
  if (w.quant != QuantKind::kNone || w.rows <= 0 || w.cols <= 0 || block_rows <= 0 || block_cols < 16 ||
      (block_cols & (block_cols - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("FP8 blocks of ", block_rows, " x ", block_cols, " for a ",
                                                   w.rows, " x ", w.cols, " matrix (unquantized; block columns a "
                                                   "power of two, 16 or more)"));
  }
  const int grid_rows = (w.rows + block_rows - 1) / block_rows, grid_cols = (w.cols + block_cols - 1) / block_cols;
  Fp8BlockTensors t;
  t.scales.assign(static_cast<size_t>(grid_rows) * grid_cols, 0.f);
  t.codes.resize(static_cast<size_t>(w.rows) * w.cols);
  std::vector<float> row(w.cols);
  for (int pass = 0; pass < 2; ++pass) {  // the blocks' scales, then the codes
    for (int r = 0; r < w.rows; ++r) {
      ConvertToF32(w.dtype, static_cast<const char*>(w.data) + static_cast<size_t>(r) * w.cols * DTypeSize(w.dtype),
                   w.cols, row.data());
      float* scales = t.scales.data() + static_cast<size_t>(r / block_rows) * grid_cols;
      for (int c = 0; c < w.cols; ++c) {
        if (!std::isfinite(row[c])) {
          return absl::InvalidArgumentError(absl::StrCat("weight (", r, ", ", c, ") is ", row[c]));
        }
        float& s = scales[c / block_cols];
        if (pass == 0) {
          s = std::max(s, std::fabs(row[c]) / 448.0f);
        } else {
          t.codes[static_cast<size_t>(r) * w.cols + c] = s > 0 ? F32ToF8E4M3(row[c] / s) : 0;
        }
      }
    }
  }
  return t;
}

absl::StatusOr<PackedInt4Tensors> PackInt4(const MatrixView& w, PackedInt4::Layout layout, bool gptq_v2) {
  const bool gptq = layout == PackedInt4::Layout::kGptq;
  if (w.quant != QuantKind::kInt4 || w.rows % 8 != 0 || (gptq && w.cols % 8 != 0) || w.cols % w.group != 0) {
    return absl::InvalidArgumentError(absl::StrCat("a ", w.rows, " x ", w.cols, " matrix ",
                                                   w.quant == QuantKind::kInt4 ? "" : "not in int4 ",
                                                   "does not pack as ", gptq ? "GPTQ" : "AWQ",
                                                   " (rows a multiple of 8, columns of 8 and of the group)"));
  }
  static constexpr int kAwqNibble[8] = {0, 4, 1, 5, 2, 6, 3, 7};
  const int groups = w.groups(), packed_rows = w.rows / 8;
  PackedInt4Tensors t;
  t.qweight.assign(gptq ? static_cast<size_t>(w.cols / 8) * w.rows : static_cast<size_t>(w.cols) * packed_rows, 0);
  t.qzeros.assign(static_cast<size_t>(groups) * packed_rows, 0);
  t.scales.resize(static_cast<size_t>(groups) * w.rows);
  auto put = [](int32_t* word, int nibble, uint32_t value) {
    *word = static_cast<int32_t>(static_cast<uint32_t>(*word) | ((value & 15u) << (4 * nibble)));
  };
  for (int o = 0; o < w.rows; ++o) {
    const int nibble = gptq ? o % 8 : kAwqNibble[o % 8];
    for (int g = 0; g < groups; ++g) {
      const float scale = w.scales[static_cast<size_t>(o) * groups + g];
      const float bias = w.biases[static_cast<size_t>(o) * groups + g];
      const int zero = scale > 0 ? static_cast<int>(std::nearbyint(-bias / scale)) : 8;
      if (gptq && !gptq_v2 && zero == 0) {
        return absl::InvalidArgumentError(absl::StrCat("row ", o, ", group ", g, " has zero point 0, which GPTQ's v1 "
                                                       "format cannot store (write gptq_v2 or AWQ)"));
      }
      t.scales[static_cast<size_t>(g) * w.rows + o] = F32ToF16(scale);
      put(&t.qzeros[static_cast<size_t>(g) * packed_rows + o / 8], nibble,
          static_cast<uint32_t>(gptq && !gptq_v2 ? zero - 1 : zero));
    }
    const uint8_t* codes = static_cast<const uint8_t*>(w.data) + static_cast<size_t>(o) * w.row_bytes();
    for (int i = 0; i < w.cols; ++i) {
      const uint32_t code = static_cast<uint32_t>(Int4CodeAt(codes, i));
      if (gptq) {
        put(&t.qweight[static_cast<size_t>(i / 8) * w.rows + o], i % 8, code);
      } else {
        put(&t.qweight[static_cast<size_t>(i) * packed_rows + o / 8], nibble, code);
      }
    }
  }
  return t;
}

}  // namespace moemesh
