#include "services/common/tensor_proto.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace moemesh {

void SetF32Shape(int64_t rows, int64_t cols, v1::Tensor* t) {
  t->set_dtype(v1::DTYPE_F32);
  t->clear_shape();
  t->add_shape(rows);
  t->add_shape(cols);
  t->clear_data();
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
  if (t.shape_size() != 2 || t.shape(0) < 0 || t.shape(1) < 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": shape must be [rows, cols]"));
  }
  if (want_cols >= 0 && t.shape(1) != want_cols) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": has ", t.shape(1), " columns, expected ", want_cols));
  }
  uint64_t want_bytes = static_cast<uint64_t>(t.shape(0)) * static_cast<uint64_t>(t.shape(1)) * 4;
  if (bytes != want_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", bytes, " bytes of data, shape [",
                                                   t.shape(0), ", ", t.shape(1), "] needs ", want_bytes));
  }
  if (reinterpret_cast<uintptr_t>(data) % alignof(float) != 0) {
    return absl::InternalError(absl::StrCat(what, ": tensor data is not 4-byte aligned"));
  }
  return F32Matrix{reinterpret_cast<const float*>(data), t.shape(0), t.shape(1)};
}

}  // namespace moemesh
