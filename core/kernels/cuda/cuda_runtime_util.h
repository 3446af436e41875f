#ifndef MOEMESH_CORE_KERNELS_CUDA_CUDA_RUNTIME_UTIL_H_
#define MOEMESH_CORE_KERNELS_CUDA_CUDA_RUNTIME_UTIL_H_

// Host-only view of the CUDA runtime for moemesh (DESIGN.md, convention 5):
// no CUDA header leaks into callers; CUDA errors become absl::Status here.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace moemesh {

// A CUDA stream, opaque to callers (cudaStream_t underneath); null is the
// default stream.
using CudaStream = void*;

// Devices present; 0 without a driver or GPU (never an error).
int CudaDeviceCount();

// The current device's compute capability as 10 * major + minor (90 for
// H100 and H200); 0 without a device.
int CudaComputeCapability();

// Counts the device buffers freed in this process. A CUDA graph holds the
// addresses its kernels were captured with: one captured at an earlier
// count may name freed memory, and must be captured again.
uint64_t DeviceFreeCount();
// Counts a release of device memory that DeviceBuffer did not make (another
// process's memory unmapped, core/kernels/cuda/cuda_ipc.h).
void CountDeviceFree();

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

// Page-locked host memory (cudaHostAlloc), freed on destruction: copies
// from and to it run asynchronously, at full PCIe speed, and overlap with
// kernels.
class PinnedBuffer {
 public:
  static absl::StatusOr<std::unique_ptr<PinnedBuffer>> Allocate(size_t bytes);
  ~PinnedBuffer();

  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  PinnedBuffer(void* ptr, size_t bytes) : ptr_(ptr), bytes_(bytes) {}
  void* ptr_;
  size_t bytes_;
};

// `bytes` of page-locked host memory in one piece, freed when the last
// owner lets go: the arena of a GPU router's host KV tier (HostArena in
// core/kv/host_kv_tier.h), from which blocks copy to the GPU by DMA.
absl::StatusOr<std::shared_ptr<void>> PinnedHostArena(size_t bytes);

// Whether `host` lies in page-locked memory (cudaHostAlloc or registered):
// a copy from there needs no staging buffer.
bool IsPageLocked(const void* host);

// A stream of its own that does not wait for the legacy default stream
// (cudaStreamNonBlocking), destroyed with the object.
class OwnedStream {
 public:
  static absl::StatusOr<std::unique_ptr<OwnedStream>> Create();
  ~OwnedStream();
  CudaStream get() const { return stream_; }

 private:
  explicit OwnedStream(CudaStream s) : stream_(s) {}
  CudaStream stream_;
};

// An event for ordering one stream after work on another.
class CudaEvent {
 public:
  static absl::StatusOr<std::unique_ptr<CudaEvent>> Create();
  ~CudaEvent();
  // Marks the work enqueued on `stream` so far.
  absl::Status Record(CudaStream stream);
  // Work enqueued on `stream` from now on waits for the recorded work.
  absl::Status WaitOn(CudaStream stream);
  // Blocks the calling thread until the recorded work is done.
  absl::Status Synchronize();

 private:
  explicit CudaEvent(void* e) : event_(e) {}
  void* event_;
};

// Work enqueued on a stream, captured once and replayed: every launch and
// copy with the same arguments (addresses included), as one launch.
class CudaGraph {
 public:
  // Starts capturing `stream` (not the legacy default stream): until
  // EndCapture, work enqueued on it from this thread is recorded, not run.
  static absl::Status BeginCapture(CudaStream stream);
  // Ends the capture and makes the graph runnable; an error if anything in
  // the capture failed or was not capturable (the stream is usable again
  // either way).
  static absl::StatusOr<std::unique_ptr<CudaGraph>> EndCapture(CudaStream stream);
  ~CudaGraph();
  // Enqueues the captured work on `stream`.
  absl::Status Launch(CudaStream stream);

 private:
  CudaGraph(void* graph, void* exec) : graph_(graph), exec_(exec) {}
  void* graph_;
  void* exec_;
};

// Forgets the last (non-sticky) CUDA error, such as a call a capture
// refused, so that the next launch's check does not report it.
void CudaClearLastError();

// Whether work enqueued on `stream` is being captured into a graph (then
// it must not wait on, or record, events from outside the capture).
bool CudaStreamIsCapturing(CudaStream stream);

// Makes `*buf` hold at least `bytes` (allocating twice that, room to
// grow); the old contents are lost. Callers make sure that no pending copy
// or kernel still uses the old buffer.
absl::Status GrowBuffer(std::unique_ptr<DeviceBuffer>* buf, size_t bytes);
absl::Status GrowBuffer(std::unique_ptr<PinnedBuffer>* buf, size_t bytes);

// Synchronous copies between host memory and any device address.
absl::Status CopyToDevice(void* device, const void* host, size_t bytes);
absl::Status CopyToHost(void* host, const void* device, size_t bytes);
// The same, enqueued on `stream`; asynchronous when `host` is pinned.
absl::Status CopyToDeviceAsync(void* device, const void* host, size_t bytes, CudaStream stream);
absl::Status CopyToHostAsync(void* host, const void* device, size_t bytes, CudaStream stream);
// Sets `bytes` bytes at a device address to zero, enqueued on `stream`.
absl::Status ZeroDeviceAsync(void* device, size_t bytes, CudaStream stream);
// Rows of `width` floats between device addresses with their own strides
// (in floats), enqueued on `stream`.
absl::Status CopyRowsOnDevice(const float* src, size_t src_stride, float* dst, size_t dst_stride, size_t rows,
                              size_t width, CudaStream stream);

// Makes `index` the calling thread's current device.
absl::Status CudaSetDevice(int index);

// Waits for all work on `stream`.
absl::Status CudaSynchronize(CudaStream stream);

// GPU `index`'s UUID as 32 lowercase hex digits (the same in every process,
// whatever CUDA_VISIBLE_DEVICES numbers it); empty when it cannot be read.
std::string CudaDeviceUuid(int index);

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_CUDA_RUNTIME_UTIL_H_
