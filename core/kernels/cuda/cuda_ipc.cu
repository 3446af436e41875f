#include "core/kernels/cuda/cuda_ipc.h"

#include <cuda.h>

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

// The driver's stream memory operations, looked up once through the
// runtime (no link to libcuda).
struct MemOps {
  CUresult (*wait)(CUstream, CUdeviceptr, cuuint32_t, unsigned int) = nullptr;
  CUresult (*write)(CUstream, CUdeviceptr, cuuint32_t, unsigned int) = nullptr;
};

const MemOps& DriverMemOps() {
  static const MemOps ops = [] {
    MemOps m;
    cudaDriverEntryPointQueryResult q;
    void* fn = nullptr;
    if (cudaGetDriverEntryPointByVersion("cuStreamWaitValue32", &fn, 12000, cudaEnableDefault, &q) == cudaSuccess &&
        q == cudaDriverEntryPointSuccess) {
      m.wait = reinterpret_cast<decltype(m.wait)>(fn);
    }
    fn = nullptr;
    if (cudaGetDriverEntryPointByVersion("cuStreamWriteValue32", &fn, 12000, cudaEnableDefault, &q) == cudaSuccess &&
        q == cudaDriverEntryPointSuccess) {
      m.write = reinterpret_cast<decltype(m.write)>(fn);
    }
    cudaGetLastError();
    return m;
  }();
  return ops;
}

absl::Status DriverStatus(CUresult r, const char* what) {
  if (r == CUDA_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, " failed: CUresult ", static_cast<int>(r)));
}

__global__ void SignalWordKernel(uint32_t* word, const volatile uint32_t* base, uint32_t k) {
  const uint32_t v = *base + k;
  __threadfence_system();  // the rows written before this kernel first
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(word), "r"(v) : "memory");
}

__global__ void AwaitWordKernel(const uint32_t* word, const volatile uint32_t* base, uint32_t k) {
  const uint32_t v = *base + k;
  for (;;) {
    uint32_t w;
    asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(w) : "l"(word) : "memory");
    if (static_cast<int32_t>(w - v) >= 0) break;
    __nanosleep(32);
  }
}

}  // namespace

absl::Status SignalWordAsync(void* word, const uint32_t* base, uint32_t k, CudaStream stream) {
  SignalWordKernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<uint32_t*>(word), base, k);
  return LaunchStatus("SignalWordKernel");
}

absl::Status AwaitWordAsync(const void* word, const uint32_t* base, uint32_t k, CudaStream stream) {
  AwaitWordKernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<const uint32_t*>(word), base, k);
  return LaunchStatus("AwaitWordKernel");
}

bool StreamMemOpsSupported(int device) {
  const MemOps& ops = DriverMemOps();
  if (ops.wait == nullptr || ops.write == nullptr) return false;
  // Every GPU of compute capability 7.0 or later with a driver of CUDA 12
  // has them (CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_MEM_OPS_V1 is deprecated,
  // always on); older ones may not.
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return major >= 7;
}

absl::Status StreamWaitValue(CudaStream stream, const void* addr, uint32_t value) {
  const MemOps& ops = DriverMemOps();
  if (ops.wait == nullptr) return absl::UnimplementedError("the CUDA driver has no cuStreamWaitValue32");
  return DriverStatus(ops.wait(static_cast<CUstream>(stream), reinterpret_cast<CUdeviceptr>(addr), value,
                               CU_STREAM_WAIT_VALUE_GEQ),
                      "cuStreamWaitValue32");
}

absl::Status StreamWriteValue(CudaStream stream, void* addr, uint32_t value) {
  const MemOps& ops = DriverMemOps();
  if (ops.write == nullptr) return absl::UnimplementedError("the CUDA driver has no cuStreamWriteValue32");
  return DriverStatus(ops.write(static_cast<CUstream>(stream), reinterpret_cast<CUdeviceptr>(addr), value,
                                CU_STREAM_WRITE_VALUE_DEFAULT),
                      "cuStreamWriteValue32");
}

absl::Status WriteValueNow(void* addr, uint32_t value) {
  // A stream of its own that waits for no other (the legacy default stream
  // may be the one stuck on this word).
  cudaStream_t s = nullptr;
  MM_RETURN_IF_ERROR(CudaStatus(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"));
  absl::Status st = StreamWriteValue(s, addr, value);
  if (st.ok()) st.Update(CudaStatus(cudaStreamSynchronize(s), "cudaStreamSynchronize"));
  cudaStreamDestroy(s);
  return st;
}

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

IpcMemory::~IpcMemory() {
  CountDeviceFree();  // graphs captured with this mapping are stale
  cudaIpcCloseMemHandle(ptr_);
}

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
