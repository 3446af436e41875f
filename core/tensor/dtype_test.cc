#include "core/tensor/dtype.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace moemesh {
namespace {

TEST(DTypeTest, ParsesSafetensorsNames) {
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kI8, DType::kI32, DType::kI64, DType::kF8E4M3}) {
    auto parsed = ParseDType(DTypeName(t));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, t);
  }
  auto bad = ParseDType("F8_E5M2");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("F8_E5M2"), std::string::npos);
}

// Every E4M3 byte against the format's definition: (-1)^s 2^(e - 7) (1 + m / 8),
// or 2^-6 (m / 8) where e is 0; 0x7F and 0xFF (NaN in e4m3fn) come out as 480.
TEST(DTypeTest, F8E4M3DecodesEveryByte) {
  for (int b = 0; b < 256; ++b) {
    const int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
    double want = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1 + m / 8.0, e - 7);
    if (s) want = -want;
    EXPECT_EQ(F8E4M3ToF32(static_cast<uint8_t>(b)), static_cast<float>(want)) << "byte " << b;
  }
  // Encoding: every finite value round-trips; between two neighbours the
  // nearer wins (ties to the even code); beyond 448 saturates.
  for (int b = 0; b < 256; ++b) {
    if ((b & 0x7F) == 0x7F) continue;
    const float v = F8E4M3ToF32(static_cast<uint8_t>(b));
    EXPECT_EQ(F8E4M3ToF32(F32ToF8E4M3(v)), v) << "byte " << b;
    const uint8_t next = static_cast<uint8_t>(b + 1);
    if ((b & 0x80) || (next & 0x7F) == 0x7F) continue;
    const float w = F8E4M3ToF32(next), mid = (v + w) / 2;
    EXPECT_EQ(F8E4M3ToF32(F32ToF8E4M3(v + (w - v) * 0.4f)), v) << "byte " << b;
    EXPECT_EQ(F8E4M3ToF32(F32ToF8E4M3(v + (w - v) * 0.6f)), w) << "byte " << b;
    EXPECT_EQ(F32ToF8E4M3(mid) & 1, 0) << "byte " << b << ": a tie goes to the even code";
  }
  EXPECT_EQ(F32ToF8E4M3(1e6f), 0x7E);
  EXPECT_EQ(F32ToF8E4M3(-500.0f), 0xFE);
  EXPECT_EQ(F32ToF8E4M3(1e-9f), 0x00);
  const uint8_t bytes[3] = {0x38, 0xB8, 0x7E};  // 1, -1, 448
  float out[3];
  ConvertToF32(DType::kF8E4M3, bytes, 3, out);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -1.0f);
  EXPECT_EQ(out[2], 448.0f);
}

TEST(DTypeTest, Bf16RoundTripsAndRoundsToNearestEven) {
  EXPECT_EQ(Bf16ToF32(F32ToBf16(1.5f)), 1.5f);
  EXPECT_EQ(Bf16ToF32(F32ToBf16(-3.0f)), -3.0f);
  // 1 + 2^-8 is halfway between two bf16 values; ties go to even (1.0).
  EXPECT_EQ(Bf16ToF32(F32ToBf16(1.0f + 1.0f / 256)), 1.0f);
  EXPECT_EQ(Bf16ToF32(F32ToBf16(1.0f + 3.0f / 256)), 1.0f + 4.0f / 256);
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(NAN))));
}

TEST(DTypeTest, F16IsExactOnEveryHalfValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = F16ToF32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(F32ToF16(f), h) << "half bits " << h;
  }
  EXPECT_EQ(F16ToF32(0x3c00), 1.0f);
  EXPECT_EQ(F16ToF32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(F16ToF32(F32ToF16(1e6f)), std::numeric_limits<float>::infinity());
}

TEST(DTypeTest, ConvertToF32HandlesEachFloatType) {
  uint16_t bf[2] = {F32ToBf16(2.0f), F32ToBf16(-0.5f)};
  uint16_t hf[2] = {F32ToF16(2.0f), F32ToF16(-0.5f)};
  float out[2];
  ConvertToF32(DType::kBF16, bf, 2, out);
  EXPECT_EQ(out[0], 2.0f);
  EXPECT_EQ(out[1], -0.5f);
  ConvertToF32(DType::kF16, hf, 2, out);
  EXPECT_EQ(out[0], 2.0f);
  EXPECT_EQ(out[1], -0.5f);
}

}  // namespace
}  // namespace moemesh
