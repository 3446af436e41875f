#ifndef MOEMESH_CORE_TENSOR_MATRIX_VIEW_H_
#define MOEMESH_CORE_TENSOR_MATRIX_VIEW_H_

#include <cstddef>

#include "core/tensor/dtype.h"

namespace moemesh {

// A non-owning row-major [rows, cols] matrix of F32, F16 or BF16 elements.
struct MatrixView {
  DType dtype = DType::kF32;
  int rows = 0;
  int cols = 0;
  const void* data = nullptr;

  bool empty() const { return data == nullptr; }
  size_t nbytes() const { return static_cast<size_t>(rows) * cols * DTypeSize(dtype); }
  // Rows [first, first + count) as a matrix of their own.
  MatrixView RowSlice(int first, int count) const {
    return MatrixView{dtype, count, cols,
                      static_cast<const char*>(data) + static_cast<size_t>(first) * cols * DTypeSize(dtype)};
  }
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_TENSOR_MATRIX_VIEW_H_
