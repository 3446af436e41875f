#include "core/kernels/cuda/cuda_ipc.h"

#include <cstring>

#include "absl/time/clock.h"

#include "core/common/status_macros.h"
#include "core/kernels/cuda/cuda_check.cuh"

namespace moemesh {
namespace {

// A failure to open another process's handle is about where the two
// processes are, not a bug: UNAVAILABLE, and the sticky-free error cleared.
absl::Status OpenStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();
  return absl::UnavailableError(absl::StrCat(what, ": ", cudaGetErrorName(e), ": ", cudaGetErrorString(e),
                                             " (CUDA IPC needs both processes on one host, in one IPC "
                                             "namespace: in containers, share the host's IPC namespace)"));
}

template <typename Handle>
absl::StatusOr<Handle> ParseHandle(absl::string_view bytes, const char* what) {
  Handle h;
  if (bytes.size() != sizeof(h)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " handle of ", bytes.size(), " bytes; a CUDA IPC handle has ", sizeof(h)));
  }
  std::memcpy(&h, bytes.data(), sizeof(h));
  return h;
}

}  // namespace

absl::StatusOr<std::string> ExportDeviceMemory(const DeviceBuffer& buffer) {
  cudaIpcMemHandle_t h;
  MM_RETURN_IF_ERROR(CudaStatus(cudaIpcGetMemHandle(&h, buffer.data()), "cudaIpcGetMemHandle"));
  return std::string(reinterpret_cast<const char*>(&h), sizeof(h));
}

absl::StatusOr<std::unique_ptr<IpcMemory>> IpcMemory::Open(absl::string_view handle) {
  MM_ASSIGN_OR_RETURN(cudaIpcMemHandle_t h, ParseHandle<cudaIpcMemHandle_t>(handle, "device memory"));
  void* p = nullptr;
  MM_RETURN_IF_ERROR(OpenStatus(cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess), "cudaIpcOpenMemHandle"));
  return std::unique_ptr<IpcMemory>(new IpcMemory(p));
}

IpcMemory::~IpcMemory() { cudaIpcCloseMemHandle(ptr_); }

bool WaitForStream(CudaStream stream, absl::Duration timeout) {
  cudaEvent_t e = nullptr;
  if (cudaEventCreateWithFlags(&e, cudaEventDisableTiming) != cudaSuccess) return false;
  bool done = cudaEventRecord(e, static_cast<cudaStream_t>(stream)) == cudaSuccess;
  const absl::Time deadline = absl::Now() + timeout;
  while (done) {
    const cudaError_t q = cudaEventQuery(e);
    if (q == cudaSuccess) break;
    if (q != cudaErrorNotReady || absl::Now() > deadline) done = false;
    if (done) absl::SleepFor(absl::Microseconds(100));
  }
  cudaEventDestroy(e);
  cudaGetLastError();
  return done;
}

absl::StatusOr<std::unique_ptr<IpcEvent>> IpcEvent::Create() {
  cudaEvent_t e = nullptr;
  MM_RETURN_IF_ERROR(CudaStatus(cudaEventCreateWithFlags(&e, cudaEventDisableTiming | cudaEventInterprocess),
                                "cudaEventCreate (interprocess)"));
  return std::unique_ptr<IpcEvent>(new IpcEvent(e));
}

absl::StatusOr<std::unique_ptr<IpcEvent>> IpcEvent::Open(absl::string_view handle) {
  MM_ASSIGN_OR_RETURN(cudaIpcEventHandle_t h, ParseHandle<cudaIpcEventHandle_t>(handle, "event"));
  cudaEvent_t e = nullptr;
  MM_RETURN_IF_ERROR(OpenStatus(cudaIpcOpenEventHandle(&e, h), "cudaIpcOpenEventHandle"));
  return std::unique_ptr<IpcEvent>(new IpcEvent(e));
}

IpcEvent::~IpcEvent() { cudaEventDestroy(static_cast<cudaEvent_t>(event_)); }

absl::StatusOr<std::string> IpcEvent::Export() const {
  cudaIpcEventHandle_t h;
  MM_RETURN_IF_ERROR(CudaStatus(cudaIpcGetEventHandle(&h, static_cast<cudaEvent_t>(event_)), "cudaIpcGetEventHandle"));
  return std::string(reinterpret_cast<const char*>(&h), sizeof(h));
}

absl::Status IpcEvent::Record(CudaStream stream) {
  return CudaStatus(cudaEventRecord(static_cast<cudaEvent_t>(event_), static_cast<cudaStream_t>(stream)),
                    "cudaEventRecord (interprocess)");
}

absl::Status IpcEvent::WaitOn(CudaStream stream) {
  return CudaStatus(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), static_cast<cudaEvent_t>(event_), 0),
                    "cudaStreamWaitEvent (interprocess)");
}

absl::Status IpcEvent::Synchronize() {
  return CudaStatus(cudaEventSynchronize(static_cast<cudaEvent_t>(event_)), "cudaEventSynchronize (interprocess)");
}

absl::Status CopyOnDeviceAsync(void* dst, const void* src, size_t bytes, CudaStream stream) {
  if (bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, static_cast<cudaStream_t>(stream)),
                    "cudaMemcpyAsync (device to device)");
}

}  // namespace moemesh
