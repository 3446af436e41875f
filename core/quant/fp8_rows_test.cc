#include "core/quant/fp8_rows.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/tensor/dtype.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

float FromBits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

// The fast encoder gives the reference's bits: on a stride through every
// positive float up to past 448, at each code's value and at the midpoints
// between neighbouring codes (the ties) and the floats either side of them,
// for both signs, and on the special values.
TEST(Fp8RowsTest, FastEncoderMatchesTheReference) {
  const uint32_t top = 0x43F00000;  // 480, past the largest code
  for (uint32_t b = 0; b <= top; b += 61) {
    const float f = FromBits(b);
    ASSERT_EQ(F32ToF8E4M3Fast(f), F32ToF8E4M3(f)) << f;
    ASSERT_EQ(F32ToF8E4M3Fast(-f), F32ToF8E4M3(-f)) << -f;
  }
  for (int code = 0; code < 0x7E; ++code) {
    const float lo = F8E4M3ToF32(static_cast<uint8_t>(code)), hi = F8E4M3ToF32(static_cast<uint8_t>(code + 1));
    const float mid = 0.5f * (lo + hi);  // exact: one more bit than the codes have
    for (float f : {lo, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f), hi}) {
      ASSERT_EQ(F32ToF8E4M3Fast(f), F32ToF8E4M3(f)) << f;
      ASSERT_EQ(F32ToF8E4M3Fast(-f), F32ToF8E4M3(-f)) << -f;
    }
  }
  const float inf = std::numeric_limits<float>::infinity();
  for (float f : {0.0f, -0.0f, 448.0f, 464.0f, 1e30f, inf, -inf, std::numeric_limits<float>::denorm_min()}) {
    EXPECT_EQ(F32ToF8E4M3Fast(f), F32ToF8E4M3(f)) << f;
  }
  EXPECT_EQ(F32ToF8E4M3Fast(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(F32ToF8E4M3Fast(-std::numeric_limits<float>::quiet_NaN()), 0x7F);
}

// Each group of 128 columns (the last one short) gets its own scale, its
// largest magnitude comes back as itself, and every value within half an
// E4M3 step of itself.
TEST(Fp8RowsTest, RoundTripIsWithinHalfAStepPerGroup) {
  const int cols = 300;  // groups of 128, 128 and 44
  ASSERT_EQ(Fp8RowGroups(cols), 3);
  std::vector<float> row(cols);
  for (int c = 0; c < cols; ++c) {
    // Groups far apart in size, each with values down in E4M3's subnormal
    // codes (below 2^-6 of 448 times the scale) and ties.
    const float magnitude = c < 128 ? 1e-3f : c < 256 ? 50.0f : 3.0f;
    row[c] = magnitude * std::sin(0.37f * static_cast<float>(c) + 0.1f) * (c % 5 == 0 ? 1e-3f : 1.0f);
  }
  row[200] = -80.0f;  // the middle group's largest, negative
  std::vector<uint8_t> codes(cols);
  std::vector<float> scales(3), back(cols);
  QuantizeRowFp8(row.data(), cols, codes.data(), scales.data());
  DequantizeRowFp8(codes.data(), scales.data(), cols, back.data());
  EXPECT_FLOAT_EQ(scales[1], 80.0f / 448.0f);
  EXPECT_EQ(codes[200], 0xFE);  // -448
  EXPECT_NEAR(back[200], -80.0f, 80.0f * 1e-6f);
  for (int g = 0; g < 3; ++g) {
    float amax = 0;
    for (int c = 128 * g; c < std::min(cols, 128 * (g + 1)); ++c) amax = std::max(amax, std::fabs(row[c]));
    EXPECT_FLOAT_EQ(scales[g], amax / 448.0f) << g;
    for (int c = 128 * g; c < std::min(cols, 128 * (g + 1)); ++c) {
      // Half a step: 2^-4 of the value in the normal range, 2^-10 of the
      // scale below it (steps of 2^-9 there); a little more for the
      // divisions' and products' own rounding.
      const float bound = std::max(std::fabs(row[c]) / 16, scales[g] / 1024) * 1.0001f;
      ASSERT_LE(std::fabs(back[c] - row[c]), bound) << "column " << c;
      // The vector paths give the scalar reference's bits.
      ASSERT_EQ(codes[c], F32ToF8E4M3(row[c] / scales[g])) << "column " << c;
      ASSERT_EQ(back[c], F8E4M3ToF32(codes[c]) * scales[g]) << "column " << c;
    }
  }
}

// A row whose groups' scales are 1 (each begins with 448) holding every tie
// between neighbouring codes, both signs: the vector path rounds them as the
// reference does.
TEST(Fp8RowsTest, RowOfTiesRoundsAsTheReference) {
  std::vector<float> row;
  for (int code = 0; code < 0x7E; ++code) {
    const float mid = 0.5f * (F8E4M3ToF32(static_cast<uint8_t>(code)) + F8E4M3ToF32(static_cast<uint8_t>(code + 1)));
    for (float f : {mid, -mid}) {
      if (row.size() % kFp8RowGroup == 0) row.push_back(448.0f);
      row.push_back(f);
    }
  }
  const int cols = static_cast<int>(row.size());
  std::vector<uint8_t> codes(cols);
  std::vector<float> scales(Fp8RowGroups(cols));
  QuantizeRowFp8(row.data(), cols, codes.data(), scales.data());
  for (float s : scales) ASSERT_EQ(s, 1.0f);
  for (int c = 0; c < cols; ++c) ASSERT_EQ(codes[c], F32ToF8E4M3(row[c])) << row[c];
}

// Zero and unscalably small groups come back as zeros; a NaN or an
// infinity makes its group (and only it) non-finite.
TEST(Fp8RowsTest, ZeroTinyAndNonFiniteGroups) {
  const int cols = 4 * kFp8RowGroup;
  std::vector<float> row(cols, 0.5f);
  std::fill(row.begin(), row.begin() + 128, 0.0f);
  std::fill(row.begin() + 128, row.begin() + 256, 1e-39f);  // subnormal
  row[300] = std::numeric_limits<float>::infinity();
  row[400] = std::numeric_limits<float>::quiet_NaN();
  std::vector<uint8_t> codes(cols, 0x55);
  std::vector<float> scales(4), back(cols);
  QuantizeRowFp8(row.data(), cols, codes.data(), scales.data());
  DequantizeRowFp8(codes.data(), scales.data(), cols, back.data());
  EXPECT_EQ(scales[0], 0.0f);
  EXPECT_EQ(scales[1], 0.0f);
  for (int c = 0; c < 256; ++c) ASSERT_EQ(back[c], 0.0f) << c;
  for (int c = 256; c < cols; ++c) ASSERT_FALSE(std::isfinite(back[c])) << c;
  // A finite row is untouched by its neighbours' trouble.
  std::vector<float> clean(cols, 0.5f);
  QuantizeRowFp8(clean.data(), cols, codes.data(), scales.data());
  DequantizeRowFp8(codes.data(), scales.data(), cols, back.data());
  for (int c = 0; c < cols; ++c) ASSERT_EQ(back[c], 0.5f) << c;
}

}  // namespace
}  // namespace moemesh
