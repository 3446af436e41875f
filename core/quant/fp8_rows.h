#ifndef MOEMESH_CORE_QUANT_FP8_ROWS_H_
#define MOEMESH_CORE_QUANT_FP8_ROWS_H_

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace moemesh {

// Activations in FP8 as DeepSeek-V3 quantizes them for its FP8 products:
// each row's columns in groups of kFp8RowGroup, each group with its own
// float scale (its largest magnitude / 448, E4M3's largest finite value) and
// E4M3 codes of value / scale rounded to nearest even. A value then comes
// back as code × scale, within 2^-4 of itself relative to its group's
// largest (3 mantissa bits). The expert hop carries rows in this form
// (--expert-rows fp8): a quarter of their f32 bytes, plus 4 bytes a group.
inline constexpr int kFp8RowGroup = 128;

// Scales a row of `cols` columns needs.
inline int Fp8RowGroups(int cols) { return cols / kFp8RowGroup + (cols % kFp8RowGroup != 0); }

// Writes `cols` codes and Fp8RowGroups(cols) scales. A group whose largest
// magnitude is below FLT_MIN (all zeros, or too small to scale) gets scale 0
// and zero codes; a group holding NaN or an infinity gets a NaN scale, so it
// comes back non-finite rather than silently finite.
void QuantizeRowFp8(const float* row, int cols, uint8_t* codes, float* scales);

// The inverse: row[c] = value of codes[c] × scales[c / kFp8RowGroup].
void DequantizeRowFp8(const uint8_t* codes, const float* scales, int cols, float* row);

// The nearest E4M3 code to `f` (ties to even), the bits F32ToF8E4M3
// (core/tensor/dtype.h) gives, saturating at ±448, NaN to 0x7F, but with no
// branches or library calls, so that a loop over a row vectorizes.
inline uint8_t F32ToF8E4M3Fast(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  const uint32_t sign = (bits >> 24) & 0x80;
  const uint32_t magnitude = bits & 0x7FFFFFFF;
  float a;
  std::memcpy(&a, &magnitude, sizeof a);
  a = std::min(a, 448.0f);
  // Below 2^-6 codes count steps of 2^-9: added to 2^14, whose ulp is 2^-9,
  // `a` is rounded to a whole number of them (to even) by the addition.
  const float shifted = a + 0x1p14f;
  uint32_t sub;
  std::memcpy(&sub, &shifted, sizeof sub);
  sub -= 0x46800000;  // 2^14's bits
  // Above: the mantissa rounded to 3 bits (to even; a carry moves the
  // exponent up), the exponent's bias moved from 127 to 7.
  uint32_t norm;
  std::memcpy(&norm, &a, sizeof norm);
  norm = ((norm + 0x7FFFF + ((norm >> 20) & 1)) >> 20) - (120 << 3);
  const uint32_t code = (a < 0x1p-6f ? sub : norm) | sign;
  return static_cast<uint8_t>(magnitude > 0x7F800000 ? 0x7F : code);
}

}  // namespace moemesh

#endif  // MOEMESH_CORE_QUANT_FP8_ROWS_H_
