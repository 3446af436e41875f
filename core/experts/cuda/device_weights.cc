#include "core/experts/cuda/device_weights.h"

#include <cstring>

#include "core/common/status_macros.h"
#include "core/kernels/cpu/linear.h"
#include "core/tensor/dtype.h"

namespace moemesh {

absl::StatusOr<std::unique_ptr<DeviceBuffer>> UploadBf16(std::initializer_list<const MatrixView*> matrices) {
  std::vector<uint16_t> bf16;
  for (const MatrixView* m : matrices) {
    const size_t n = static_cast<size_t>(m->rows) * m->cols;
    const size_t at = bf16.size();
    bf16.resize(at + n);
    if (m->quantized()) {
      // A quantized checkpoint's layer (GPTQ, AWQ, FP8 blocks), its weights
      // as the CPU's kernels see them, rounded to bf16: the GPU has no
      // quantized kernels yet.
      std::vector<float> row(m->cols);
      for (int r = 0; r < m->rows; ++r) {
        GatherRow(*m, r, row.data());
        for (int c = 0; c < m->cols; ++c) bf16[at + static_cast<size_t>(r) * m->cols + c] = F32ToBf16(row[c]);
      }
    } else if (m->dtype == DType::kBF16) {
      std::memcpy(bf16.data() + at, m->data, n * 2);
    } else {
      std::vector<float> f32(n);
      ConvertToF32(m->dtype, m->data, n, f32.data());
      for (size_t i = 0; i < n; ++i) bf16[at + i] = F32ToBf16(f32[i]);
    }
  }
  MM_ASSIGN_OR_RETURN(auto buf, DeviceBuffer::Allocate(std::max<size_t>(bf16.size(), 1) * 2));
  MM_RETURN_IF_ERROR(buf->CopyFrom(bf16.data(), bf16.size() * 2));
  return buf;
}

absl::StatusOr<std::unique_ptr<DeviceBuffer>> UploadF32(const MatrixView& m) {
  std::vector<float> f32(static_cast<size_t>(m.rows) * m.cols);
  if (m.quantized()) {
    for (int r = 0; r < m.rows; ++r) GatherRow(m, r, f32.data() + static_cast<size_t>(r) * m.cols);
  } else {
    ConvertToF32(m.dtype, m.data, f32.size(), f32.data());
  }
  return UploadVector(f32);
}

absl::StatusOr<std::unique_ptr<DeviceBuffer>> UploadVector(const std::vector<float>& v) {
  if (v.empty()) return std::unique_ptr<DeviceBuffer>();
  MM_ASSIGN_OR_RETURN(auto buf, DeviceBuffer::Allocate(v.size() * sizeof(float)));
  MM_RETURN_IF_ERROR(buf->CopyFrom(v.data(), v.size() * sizeof(float)));
  return buf;
}

}  // namespace moemesh
