#ifndef MOEMESH_CORE_KERNELS_CUDA_CUDA_RUNTIME_UTIL_H_
#define MOEMESH_CORE_KERNELS_CUDA_CUDA_RUNTIME_UTIL_H_

// Host-only view of the CUDA runtime for moemesh (DESIGN.md, convention 5):
// no CUDA header leaks into callers; CUDA errors become absl::Status here.

#include <cstddef>
#include <memory>

#include "absl/status/statusor.h"

namespace moemesh {

// A CUDA stream, opaque to callers (cudaStream_t underneath); null is the
// default stream.
using CudaStream = void*;

// Devices present; 0 without a driver or GPU (never an error).
int CudaDeviceCount();

// Device memory, freed on destruction.
class DeviceBuffer {
 public:
  static absl::StatusOr<std::unique_ptr<DeviceBuffer>> Allocate(size_t bytes);
  ~DeviceBuffer();

  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

  // Synchronous copies of the first `bytes` bytes (at most bytes()).
  absl::Status CopyFrom(const void* host, size_t bytes);
  absl::Status CopyTo(void* host, size_t bytes) const;
  // Fills the buffer with the byte `value` (tests poison outputs with it).
  absl::Status Fill(int value);

 private:
  DeviceBuffer(void* ptr, size_t bytes) : ptr_(ptr), bytes_(bytes) {}
  void* ptr_;
  size_t bytes_;
};

// Synchronous copies between host memory and any device address.
absl::Status CopyToDevice(void* device, const void* host, size_t bytes);
absl::Status CopyToHost(void* host, const void* device, size_t bytes);
// Rows of `width` floats between device addresses with their own strides
// (in floats), enqueued on `stream`.
absl::Status CopyRowsOnDevice(const float* src, size_t src_stride, float* dst, size_t dst_stride, size_t rows,
                              size_t width, CudaStream stream);

// Makes `index` the calling thread's current device.
absl::Status CudaSetDevice(int index);

// Waits for all work on `stream`.
absl::Status CudaSynchronize(CudaStream stream);

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_CUDA_RUNTIME_UTIL_H_
