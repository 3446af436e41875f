#ifndef MOEMESH_CORE_KERNELS_CUDA_CUDA_IPC_H_
#define MOEMESH_CORE_KERNELS_CUDA_CUDA_IPC_H_

// CUDA IPC behind a host-only header: device memory and events that two
// processes on one host share (docs/ARCHITECTURE.md, "The seams": the
// cuda-ipc expert transport). Handles travel as bytes, in messages.

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/kernels/cuda/cuda_runtime_util.h"

namespace moemesh {

// A handle to `buffer`'s memory (from cudaMalloc) that another process on
// this host can map (IpcMemory::Open).
absl::StatusOr<std::string> ExportDeviceMemory(const DeviceBuffer& buffer);

// Another process's device memory, mapped into this one (on the current
// device; another GPU's memory is reached by peer access); unmapped on
// destruction, which must come after the work that uses it (WaitForStream).
// The exporter must keep it allocated meanwhile.
class IpcMemory {
 public:
  // INVALID_ARGUMENT for bytes that are no handle; UNAVAILABLE when the
  // memory cannot be mapped (another host or IPC namespace, the same
  // process, the exporter gone).
  static absl::StatusOr<std::unique_ptr<IpcMemory>> Open(absl::string_view handle);
  ~IpcMemory();
  void* data() const { return ptr_; }

 private:
  explicit IpcMemory(void* ptr) : ptr_(ptr) {}
  void* ptr_;
};

// An event that processes share: one records it, the other orders its
// stream after the recorded work. A wait sees the record made before it
// was enqueued, so the recorder must say (by a message) that it recorded.
class IpcEvent {
 public:
  // A new event of this process, to export.
  static absl::StatusOr<std::unique_ptr<IpcEvent>> Create();
  // Another process's event, from its Export. INVALID_ARGUMENT for bytes
  // that are no handle; UNAVAILABLE when it cannot be opened.
  static absl::StatusOr<std::unique_ptr<IpcEvent>> Open(absl::string_view handle);
  ~IpcEvent();

  absl::StatusOr<std::string> Export() const;
  absl::Status Record(CudaStream stream);
  // Work enqueued on `stream` from now on waits for the recorded work.
  absl::Status WaitOn(CudaStream stream);
  // Waits on this host for the recorded work.
  absl::Status Synchronize();

 private:
  explicit IpcEvent(void* event) : event_(event) {}
  void* event_;
};

// Waits up to `timeout` for the work enqueued on `stream` so far; false
// when it did not finish by then (it may wait on another process's event
// that never comes, from a peer that died).
bool WaitForStream(CudaStream stream, absl::Duration timeout);

// Stream memory operations (the driver's cuStreamWaitValue32 and
// cuStreamWriteValue32, reached through the runtime): a stream of one
// process waits until a 32-bit word in device memory, written by a stream
// of another, reaches a value, so that neither host waits for the other
// (the cuda-ipc transport's counters). False where the driver or `device`
// lacks them; the calls below are then UNIMPLEMENTED.
bool StreamMemOpsSupported(int device);
// Work enqueued on `stream` from now on waits until *addr, compared
// cyclically, is at least `value`.
absl::Status StreamWaitValue(CudaStream stream, const void* addr, uint32_t value);
// Writes `value` to *addr once the work enqueued on `stream` before it is
// done (and its writes visible).
absl::Status StreamWriteValue(CudaStream stream, void* addr, uint32_t value);
// Writes `value` to *addr now, ordered after no stream's work, and waits
// for it: releases a stream that waits on a word its writer will not write
// (a peer that died).
absl::Status WriteValueNow(void* addr, uint32_t value);

// The same words written and waited for by kernels, for work captured
// into a CUDA graph and replayed: each hop's number is `*base + k`, where
// `base` is a word of device memory set before each launch (StreamWriteValue
// on the graph's stream), so one graph serves every step (a stream memory
// operation would keep the value it was captured with).
// Writes *base + k to *word once the work enqueued on `stream` before it is
// done, released to the whole system (the other process, the other GPU).
absl::Status SignalWordAsync(void* word, const uint32_t* base, uint32_t k, CudaStream stream);
// Work enqueued on `stream` from now on waits until *word, compared
// cyclically, is at least *base + k: a one-thread kernel polls it. Both
// processes on one GPU must be MPS clients (else the poller holds the GPU
// for its whole time slice).
absl::Status AwaitWordAsync(const void* word, const uint32_t* base, uint32_t k, CudaStream stream);

// Copies `bytes` bytes between device pointers (of this device, or mapped
// from another process), ordered on `stream`.
absl::Status CopyOnDeviceAsync(void* dst, const void* src, size_t bytes, CudaStream stream);

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_CUDA_IPC_H_
