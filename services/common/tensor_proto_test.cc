// Tensors on the wire: shapes and byte counts are checked, and bf16 rows
// come back widened exactly.
#include "services/common/tensor_proto.h"

#include <vector>

#include "core/tensor/dtype.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

TEST(TensorProtoTest, RowsAsF32FromF32AndBf16) {
  const std::vector<float> rows = {1.0f, -2.5f, 0.15625f, 3.0e-3f, 7.0f, -0.0f};
  v1::Tensor t;
  SetF32Shape(2, 3, &t);
  std::vector<float> widened;
  const char* bytes = reinterpret_cast<const char*>(rows.data());
  auto f32 = GetRowsAsF32(t, bytes, rows.size() * 4, 3, "rows", &widened);
  ASSERT_TRUE(f32.ok()) << f32.status();
  EXPECT_EQ(f32->data, rows.data());  // a view, no copy
  std::vector<uint16_t> bf16;
  for (float f : rows) bf16.push_back(F32ToBf16(f));
  SetBf16Shape(2, 3, &t);
  auto got = GetRowsAsF32(t, reinterpret_cast<const char*>(bf16.data()), bf16.size() * 2, 3, "rows", &widened);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->rows, 2);
  ASSERT_EQ(got->cols, 3);
  for (size_t i = 0; i < rows.size(); ++i) EXPECT_EQ(got->data[i], Bf16ToF32(bf16[i])) << i;
  // Byte counts, shapes and dtypes that do not fit are refused.
  EXPECT_EQ(GetRowsAsF32(t, reinterpret_cast<const char*>(bf16.data()), 10, 3, "rows", &widened).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GetRowsAsF32(t, reinterpret_cast<const char*>(bf16.data()), 12, 4, "rows", &widened).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A shape whose byte count would wrap around is refused, not wrapped.
  v1::Tensor hostile;
  SetBf16Shape((int64_t{1} << 51) + 1, 4096, &hostile);
  std::vector<char> some(8192);
  EXPECT_EQ(GetRowsAsF32(hostile, some.data(), some.size(), 4096, "rows", &widened).status().code(),
            absl::StatusCode::kInvalidArgument);
  t.set_dtype(v1::DTYPE_F16);
  auto f16 = GetRowsAsF32(t, reinterpret_cast<const char*>(bf16.data()), 12, 3, "rows", &widened);
  EXPECT_EQ(f16.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(f16.status().message().find("DTYPE_BF16"), std::string::npos) << f16.status();
}

}  // namespace
}  // namespace moemesh
