#ifndef MOEMESH_CORE_EXPERTS_CUDA_DEVICE_WEIGHTS_H_
#define MOEMESH_CORE_EXPERTS_CUDA_DEVICE_WEIGHTS_H_

#include <initializer_list>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "core/kernels/cuda/cuda_runtime_util.h"
#include "core/tensor/matrix_view.h"

namespace moemesh {

// Matrices as bf16 on the device, one after another in one allocation (the
// expert FFN does gate and up in one GEMM when they are adjacent). F32 and
// F16 checkpoints are rounded to bf16, and so are the layers of quantized
// checkpoints (GPTQ, AWQ, FP8 blocks), dequantized as the CPU's kernels
// see them: the GPU has no quantized kernels yet, so they take bf16's
// memory there.
absl::StatusOr<std::unique_ptr<DeviceBuffer>> UploadBf16(std::initializer_list<const MatrixView*> matrices);
// A matrix as fp32 on the device (exact for every checkpoint dtype, and
// for a quantized layer's dequantized weights).
absl::StatusOr<std::unique_ptr<DeviceBuffer>> UploadF32(const MatrixView& m);
// A vector of floats on the device; null for an empty vector.
absl::StatusOr<std::unique_ptr<DeviceBuffer>> UploadVector(const std::vector<float>& v);

}  // namespace moemesh

#endif  // MOEMESH_CORE_EXPERTS_CUDA_DEVICE_WEIGHTS_H_
