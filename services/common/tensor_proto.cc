#include "services/common/tensor_proto.h"

#include <cstring>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/quant/fp8_rows.h"
#include "core/tensor/dtype.h"

namespace moemesh {

namespace {

void SetShape(v1::DType dtype, int64_t rows, int64_t cols, v1::Tensor* t) {
  t->set_dtype(dtype);
  t->clear_shape();
  t->add_shape(rows);
  t->add_shape(cols);
  t->clear_data();
}

// The shape [rows, cols] (cols == want_cols when want_cols >= 0) and a byte
// count of rows * cols * element_bytes.
absl::Status CheckRows(const v1::Tensor& t, size_t bytes, int64_t want_cols, int element_bytes, const char* what) {
  if (t.shape_size() != 2 || t.shape(0) < 0 || t.shape(1) < 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": shape must be [rows, cols]"));
  }
  if (want_cols >= 0 && t.shape(1) != want_cols) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": has ", t.shape(1), " columns, expected ", want_cols));
  }
  // Checked by division first, so that no product of a hostile shape wraps
  // around (cols is bounded, then rows by what the bytes can hold).
  const uint64_t rows = static_cast<uint64_t>(t.shape(0)), cols = static_cast<uint64_t>(t.shape(1));
  const uint64_t row_bytes = cols * element_bytes;
  if (cols > (uint64_t{1} << 40) || (cols == 0 ? bytes != 0 : rows > bytes / row_bytes)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", bytes, " bytes of data cannot hold shape [",
                                                   t.shape(0), ", ", t.shape(1), "]"));
  }
  const uint64_t want_bytes = rows * row_bytes;
  if (bytes != want_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", bytes, " bytes of data, shape [", t.shape(0), ", ",
                                                   t.shape(1), "] needs ", want_bytes));
  }
  return absl::OkStatus();
}

}  // namespace

void SetF32Shape(int64_t rows, int64_t cols, v1::Tensor* t) { SetShape(v1::DTYPE_F32, rows, cols, t); }

void SetBf16Shape(int64_t rows, int64_t cols, v1::Tensor* t) { SetShape(v1::DTYPE_BF16, rows, cols, t); }

void SetF8Shape(int64_t rows, int64_t cols, v1::Tensor* t) { SetShape(v1::DTYPE_F8_E4M3, rows, cols, t); }

void SetFp8Scales(const float* scales, int64_t rows, int64_t cols, v1::Tensor* t) {
  SetF32Tensor(scales, rows, Fp8RowGroups(static_cast<int>(cols)), t);
}

absl::StatusOr<F32Matrix> GetRowsAsF32(const v1::Tensor& t, const char* data, size_t bytes, int64_t want_cols,
                                       const char* what, const v1::Tensor& scales, std::vector<float>* widened) {
  if (t.dtype() == v1::DTYPE_F32) return GetF32Matrix(t, data, bytes, want_cols, what);
  if (t.dtype() == v1::DTYPE_F8_E4M3) {
    if (absl::Status st = CheckRows(t, bytes, want_cols, 1, what); !st.ok()) return st;
    const int64_t rows = t.shape(0), cols = t.shape(1);
    if (cols > std::numeric_limits<int>::max()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": ", cols, " columns is too many"));
    }
    const int groups = Fp8RowGroups(static_cast<int>(cols));
    const std::string scales_what = absl::StrCat(what, " (F8_E4M3): their scales");
    if (scales.dtype() != v1::DTYPE_F32 || scales.shape_size() != 2 || scales.shape(0) != rows ||
        scales.shape(1) != groups) {
      return absl::InvalidArgumentError(absl::StrCat(scales_what, " must be an F32 tensor [", rows, ", ", groups,
                                                     "] (a scale per 128 columns of each row)"));
    }
    if (absl::Status st = CheckRows(scales, scales.data().size(), groups, 4, scales_what.c_str()); !st.ok()) return st;
    std::vector<float> s(static_cast<size_t>(rows) * groups);
    std::memcpy(s.data(), scales.data().data(), s.size() * sizeof(float));  // the bytes need not be aligned
    widened->resize(static_cast<size_t>(rows * cols));
    for (int64_t r = 0; cols > 0 && r < rows; ++r) {  // no columns: rows may be any count of nothing
      DequantizeRowFp8(reinterpret_cast<const uint8_t*>(data) + r * cols, s.data() + r * groups,
                       static_cast<int>(cols), widened->data() + r * cols);
    }
    return F32Matrix{widened->data(), rows, cols};
  }
  if (t.dtype() != v1::DTYPE_BF16) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": dtype must be DTYPE_F32, DTYPE_BF16 or DTYPE_F8_E4M3, got ", t.dtype()));
  }
  if (absl::Status st = CheckRows(t, bytes, want_cols, 2, what); !st.ok()) return st;
  const size_t n = bytes / 2;
  widened->resize(n);
  for (size_t i = 0; i < n; ++i) {
    uint16_t v;
    std::memcpy(&v, data + 2 * i, 2);  // the payload need not be 2-byte aligned
    (*widened)[i] = Bf16ToF32(v);
  }
  return F32Matrix{widened->data(), t.shape(0), t.shape(1)};
}

void SetF32Tensor(const float* data, int64_t rows, int64_t cols, v1::Tensor* t) {
  SetF32Shape(rows, cols, t);
  t->set_data(reinterpret_cast<const char*>(data), static_cast<size_t>(rows * cols) * sizeof(float));
}

absl::StatusOr<F32Matrix> GetF32Matrix(const v1::Tensor& t, int64_t want_cols, const char* what) {
  return GetF32Matrix(t, t.data().data(), t.data().size(), want_cols, what);
}

absl::StatusOr<F32Matrix> GetF32Matrix(const v1::Tensor& t, const char* data, size_t bytes, int64_t want_cols,
                                       const char* what) {
  if (t.dtype() != v1::DTYPE_F32) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": dtype must be DTYPE_F32, got ", t.dtype()));
  }
  if (absl::Status st = CheckRows(t, bytes, want_cols, 4, what); !st.ok()) return st;
  if (reinterpret_cast<uintptr_t>(data) % alignof(float) != 0) {
    return absl::InternalError(absl::StrCat(what, ": tensor data is not 4-byte aligned"));
  }
  return F32Matrix{reinterpret_cast<const float*>(data), t.shape(0), t.shape(1)};
}

}  // namespace moemesh
