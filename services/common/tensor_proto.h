#ifndef MOEMESH_SERVICES_COMMON_TENSOR_PROTO_H_
#define MOEMESH_SERVICES_COMMON_TENSOR_PROTO_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "moemesh/v1/common.pb.h"

namespace moemesh {

// Fills `t` with a [rows, cols] F32 tensor copied from `data`.
void SetF32Tensor(const float* data, int64_t rows, int64_t cols, v1::Tensor* t);

// A view of a rank-2 F32 tensor's data. INVALID_ARGUMENT, naming `what`,
// unless the dtype is F32, the shape [rows, cols] (cols == want_cols when
// want_cols >= 0) and the byte count matches. The pointer lives as long as
// the message.
struct F32Matrix {
  const float* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
};
absl::StatusOr<F32Matrix> GetF32Matrix(const v1::Tensor& t, int64_t want_cols, const char* what);

// The raw data channel sends a tensor's dtype and shape in the header and
// its bytes as the frame payload: SetF32Shape fills the header side, and
// GetF32Matrix checks the header against `bytes` bytes at `data`.
void SetF32Shape(int64_t rows, int64_t cols, v1::Tensor* t);
absl::StatusOr<F32Matrix> GetF32Matrix(const v1::Tensor& t, const char* data, size_t bytes, int64_t want_cols,
                                       const char* what);

// Rows sent as BF16 (half the bytes of F32) or FP8 (a quarter, and a scale
// per 128 columns: core/quant/fp8_rows.h): SetBf16Shape and SetF8Shape fill
// the header side, SetFp8Scales the scales' tensor (with its data).
// GetRowsAsF32 takes F32 rows as GetF32Matrix does, and BF16 or FP8 rows
// widened into `*widened` (BF16 exactly; FP8 as code × scale, the scales
// from `scales`, checked against the rows' shape), which the view then
// points into.
void SetBf16Shape(int64_t rows, int64_t cols, v1::Tensor* t);
void SetF8Shape(int64_t rows, int64_t cols, v1::Tensor* t);
void SetFp8Scales(const float* scales, int64_t rows, int64_t cols, v1::Tensor* t);
absl::StatusOr<F32Matrix> GetRowsAsF32(const v1::Tensor& t, const char* data, size_t bytes, int64_t want_cols,
                                       const char* what, const v1::Tensor& scales, std::vector<float>* widened);

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_COMMON_TENSOR_PROTO_H_
