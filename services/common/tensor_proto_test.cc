// Tensors on the wire: shapes and byte counts are checked, bf16 rows come
// back widened exactly, and FP8 rows as code x scale.
#include "services/common/tensor_proto.h"

#include <cmath>
#include <vector>

#include "core/quant/fp8_rows.h"
#include "core/tensor/dtype.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

TEST(TensorProtoTest, RowsAsF32FromF32AndBf16) {
  const std::vector<float> rows = {1.0f, -2.5f, 0.15625f, 3.0e-3f, 7.0f, -0.0f};
  v1::Tensor t;
  const v1::Tensor no_scales;  // only FP8 rows have them
  SetF32Shape(2, 3, &t);
  std::vector<float> widened;
  const char* bytes = reinterpret_cast<const char*>(rows.data());
  auto f32 = GetRowsAsF32(t, bytes, rows.size() * 4, 3, "rows", no_scales, &widened);
  ASSERT_TRUE(f32.ok()) << f32.status();
  EXPECT_EQ(f32->data, rows.data());  // a view, no copy
  std::vector<uint16_t> bf16;
  for (float f : rows) bf16.push_back(F32ToBf16(f));
  SetBf16Shape(2, 3, &t);
  const char* half = reinterpret_cast<const char*>(bf16.data());
  auto got = GetRowsAsF32(t, half, bf16.size() * 2, 3, "rows", no_scales, &widened);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->rows, 2);
  ASSERT_EQ(got->cols, 3);
  for (size_t i = 0; i < rows.size(); ++i) EXPECT_EQ(got->data[i], Bf16ToF32(bf16[i])) << i;
  // Byte counts, shapes and dtypes that do not fit are refused.
  EXPECT_EQ(GetRowsAsF32(t, half, 10, 3, "rows", no_scales, &widened).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GetRowsAsF32(t, half, 12, 4, "rows", no_scales, &widened).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A shape whose byte count would wrap around is refused, not wrapped.
  v1::Tensor hostile;
  SetBf16Shape((int64_t{1} << 51) + 1, 4096, &hostile);
  std::vector<char> some(8192);
  EXPECT_EQ(GetRowsAsF32(hostile, some.data(), some.size(), 4096, "rows", no_scales, &widened).status().code(),
            absl::StatusCode::kInvalidArgument);
  t.set_dtype(v1::DTYPE_F16);
  auto f16 = GetRowsAsF32(t, half, 12, 3, "rows", no_scales, &widened);
  EXPECT_EQ(f16.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(f16.status().message().find("DTYPE_BF16"), std::string::npos) << f16.status();
}

// FP8 rows come back as code × their group's scale, with the scales checked
// against the rows' shape; rows that need a scale without one are refused.
TEST(TensorProtoTest, RowsAsF32FromFp8WithScales) {
  const int rows = 2, cols = 200;  // groups of 128 and 72
  std::vector<float> x(rows * cols);
  for (size_t i = 0; i < x.size(); ++i) x[i] = (i % 128 < 64 ? 1e-2f : 9.0f) * std::sin(0.3f * static_cast<float>(i));
  std::vector<uint8_t> codes(x.size());
  std::vector<float> scales(rows * Fp8RowGroups(cols)), want(x.size());
  for (int r = 0; r < rows; ++r) {
    QuantizeRowFp8(x.data() + r * cols, cols, codes.data() + r * cols, scales.data() + r * 2);
    DequantizeRowFp8(codes.data() + r * cols, scales.data() + r * 2, cols, want.data() + r * cols);
  }
  v1::Tensor t, s;
  SetF8Shape(rows, cols, &t);
  SetFp8Scales(scales.data(), rows, cols, &s);
  EXPECT_EQ(s.shape(1), 2);
  std::vector<float> widened;
  const char* data = reinterpret_cast<const char*>(codes.data());
  auto got = GetRowsAsF32(t, data, codes.size(), cols, "rows", s, &widened);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->rows, rows);
  EXPECT_EQ(std::vector<float>(got->data, got->data + x.size()), want);
  // Wrong scales: none, a wrong shape, too few bytes, another dtype.
  auto refused = [&](const v1::Tensor& bad) {
    auto st = GetRowsAsF32(t, data, codes.size(), cols, "rows", bad, &widened).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("scales"), std::string::npos) << st;
  };
  refused(v1::Tensor());
  v1::Tensor bad = s;
  bad.set_shape(1, 1);
  refused(bad);
  bad = s;
  bad.mutable_data()->resize(12);
  refused(bad);
  bad = s;
  bad.set_dtype(v1::DTYPE_BF16);
  refused(bad);
  // Hostile shapes: a count of empty rows takes no time; columns past an
  // int are refused.
  v1::Tensor empty_rows, no_scales;
  SetF8Shape(int64_t{1} << 60, 0, &empty_rows);
  no_scales.set_dtype(v1::DTYPE_F32);
  no_scales.add_shape(int64_t{1} << 60);  // [rows, no groups]
  no_scales.add_shape(0);
  auto none = GetRowsAsF32(empty_rows, data, 0, -1, "rows", no_scales, &widened);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(none->cols, 0);
  v1::Tensor wide;
  SetF8Shape(0, int64_t{1} << 35, &wide);
  EXPECT_EQ(GetRowsAsF32(wide, data, 0, -1, "rows", s, &widened).status().code(), absl::StatusCode::kInvalidArgument);
  // Codes that do not fill the shape.
  EXPECT_EQ(GetRowsAsF32(t, data, codes.size() - 1, cols, "rows", s, &widened).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moemesh
