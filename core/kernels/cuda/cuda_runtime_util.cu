#include "core/kernels/cuda/cuda_runtime_util.h"

#include <algorithm>
#include <atomic>

#include "core/common/status_macros.h"
#include "core/kernels/cuda/cuda_check.cuh"

namespace moemesh {

int CudaDeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

int CudaComputeCapability() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return 10 * major + minor;
}

absl::StatusOr<std::unique_ptr<DeviceBuffer>> DeviceBuffer::Allocate(size_t bytes) {
  void* p = nullptr;
  if (bytes > 0) {
    absl::Status st = CudaStatus(cudaMalloc(&p, bytes), "cudaMalloc");
    if (!st.ok()) return absl::ResourceExhaustedError(absl::StrCat(st.message(), " (", bytes, " bytes)"));
  }
  return std::unique_ptr<DeviceBuffer>(new DeviceBuffer(p, bytes));
}

namespace {
std::atomic<uint64_t> device_frees{0};
}  // namespace

uint64_t DeviceFreeCount() { return device_frees.load(std::memory_order_acquire); }

void CountDeviceFree() { device_frees.fetch_add(1, std::memory_order_acq_rel); }

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) {
    device_frees.fetch_add(1, std::memory_order_acq_rel);
    cudaFree(ptr_);
  }
}

absl::Status DeviceBuffer::CopyFrom(const void* host, size_t bytes) {
  if (bytes > bytes_) return absl::InvalidArgumentError("copy larger than the device buffer");
  return CopyToDevice(ptr_, host, bytes);
}

absl::Status DeviceBuffer::CopyTo(void* host, size_t bytes) const {
  if (bytes > bytes_) return absl::InvalidArgumentError("copy larger than the device buffer");
  return CopyToHost(host, ptr_, bytes);
}

absl::Status DeviceBuffer::Fill(int value) {
  return CudaStatus(cudaMemset(ptr_, value, bytes_), "cudaMemset");
}

absl::Status CopyToDevice(void* device, const void* host, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy to device");
}

absl::Status CopyToHost(void* host, const void* device, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy to host");
}

absl::StatusOr<std::unique_ptr<PinnedBuffer>> PinnedBuffer::Allocate(size_t bytes) {
  void* p = nullptr;
  if (bytes > 0) {
    absl::Status st = CudaStatus(cudaHostAlloc(&p, bytes, cudaHostAllocPortable), "cudaHostAlloc");
    if (!st.ok()) return absl::ResourceExhaustedError(absl::StrCat(st.message(), " (", bytes, " bytes)"));
  }
  return std::unique_ptr<PinnedBuffer>(new PinnedBuffer(p, bytes));
}

PinnedBuffer::~PinnedBuffer() {
  if (ptr_ != nullptr) cudaFreeHost(ptr_);
}

absl::StatusOr<std::shared_ptr<void>> PinnedHostArena(size_t bytes) {
  MM_ASSIGN_OR_RETURN(std::unique_ptr<PinnedBuffer> buf, PinnedBuffer::Allocate(bytes));
  PinnedBuffer* raw = buf.release();
  return std::shared_ptr<void>(raw->data(), [raw](void*) { delete raw; });
}

bool IsPageLocked(const void* host) {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, host) != cudaSuccess) {
    cudaGetLastError();  // not an error worth keeping: just not CUDA's memory
    return false;
  }
  return a.type == cudaMemoryTypeHost;
}

namespace {
template <typename Buffer>
absl::Status Grow(std::unique_ptr<Buffer>* buf, size_t bytes) {
  if (*buf != nullptr && (*buf)->bytes() >= bytes) return absl::OkStatus();
  buf->reset();
  MM_ASSIGN_OR_RETURN(*buf, Buffer::Allocate(std::max<size_t>(bytes, 256) * 2));
  return absl::OkStatus();
}
}  // namespace

absl::Status GrowBuffer(std::unique_ptr<DeviceBuffer>* buf, size_t bytes) { return Grow(buf, bytes); }
absl::Status GrowBuffer(std::unique_ptr<PinnedBuffer>* buf, size_t bytes) { return Grow(buf, bytes); }

absl::StatusOr<std::unique_ptr<OwnedStream>> OwnedStream::Create() {
  cudaStream_t s = nullptr;
  MM_RETURN_IF_ERROR(CudaStatus(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"));
  return std::unique_ptr<OwnedStream>(new OwnedStream(s));
}

absl::Status CudaGraph::BeginCapture(CudaStream stream) {
  // Thread-local: another thread's unrelated CUDA calls neither break the
  // capture nor are refused because of it.
  return CudaStatus(cudaStreamBeginCapture(static_cast<cudaStream_t>(stream), cudaStreamCaptureModeThreadLocal),
                    "cudaStreamBeginCapture");
}

absl::StatusOr<std::unique_ptr<CudaGraph>> CudaGraph::EndCapture(CudaStream stream) {
  cudaGraph_t graph = nullptr;
  if (absl::Status st = CudaStatus(cudaStreamEndCapture(static_cast<cudaStream_t>(stream), &graph),
                                   "cudaStreamEndCapture");
      !st.ok()) {
    // What broke the capture is not sticky: clear it, or the next launch's
    // check would report it.
    cudaGetLastError();
    return st;
  }
  cudaGraphExec_t exec = nullptr;
  if (absl::Status st = CudaStatus(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate"); !st.ok()) {
    cudaGetLastError();
    cudaGraphDestroy(graph);
    return st;
  }
  return std::unique_ptr<CudaGraph>(new CudaGraph(graph, exec));
}

CudaGraph::~CudaGraph() {
  cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
}

absl::Status CudaGraph::Launch(CudaStream stream) {
  return CudaStatus(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), static_cast<cudaStream_t>(stream)),
                    "cudaGraphLaunch");
}

void CudaClearLastError() { cudaGetLastError(); }

bool CudaStreamIsCapturing(CudaStream stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(static_cast<cudaStream_t>(stream), &status) != cudaSuccess) return false;
  return status != cudaStreamCaptureStatusNone;
}

OwnedStream::~OwnedStream() { cudaStreamDestroy(static_cast<cudaStream_t>(stream_)); }

absl::StatusOr<std::unique_ptr<CudaEvent>> CudaEvent::Create() {
  cudaEvent_t e = nullptr;
  MM_RETURN_IF_ERROR(CudaStatus(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate"));
  return std::unique_ptr<CudaEvent>(new CudaEvent(e));
}

CudaEvent::~CudaEvent() { cudaEventDestroy(static_cast<cudaEvent_t>(event_)); }

absl::Status CudaEvent::Record(CudaStream stream) {
  return CudaStatus(cudaEventRecord(static_cast<cudaEvent_t>(event_), static_cast<cudaStream_t>(stream)),
                    "cudaEventRecord");
}

absl::Status CudaEvent::WaitOn(CudaStream stream) {
  return CudaStatus(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), static_cast<cudaEvent_t>(event_), 0),
                    "cudaStreamWaitEvent");
}

absl::Status CudaEvent::Synchronize() {
  return CudaStatus(cudaEventSynchronize(static_cast<cudaEvent_t>(event_)), "cudaEventSynchronize");
}

absl::Status CopyToDeviceAsync(void* device, const void* host, size_t bytes, CudaStream stream) {
  if (bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream)),
                    "cudaMemcpyAsync to device");
}

absl::Status CopyToHostAsync(void* host, const void* device, size_t bytes, CudaStream stream) {
  if (bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(stream)),
                    "cudaMemcpyAsync to host");
}

absl::Status ZeroDeviceAsync(void* device, size_t bytes, CudaStream stream) {
  return CudaStatus(cudaMemsetAsync(device, 0, bytes, static_cast<cudaStream_t>(stream)), "cudaMemsetAsync");
}

absl::Status CopyRowsOnDevice(const float* src, size_t src_stride, float* dst, size_t dst_stride, size_t rows,
                              size_t width, CudaStream stream) {
  if (rows == 0 || width == 0) return absl::OkStatus();
  return CudaStatus(cudaMemcpy2DAsync(dst, dst_stride * sizeof(float), src, src_stride * sizeof(float),
                                      width * sizeof(float), rows, cudaMemcpyDeviceToDevice,
                                      static_cast<cudaStream_t>(stream)),
                    "cudaMemcpy2DAsync");
}

absl::Status CudaSetDevice(int index) { return CudaStatus(cudaSetDevice(index), "cudaSetDevice"); }

absl::Status CudaSynchronize(CudaStream stream) {
  return CudaStatus(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
}

std::string CudaDeviceUuid(int index) {
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, index) != cudaSuccess) {
    cudaGetLastError();
    return "";
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string uuid;
  for (unsigned char b : prop.uuid.bytes) {
    uuid += kHex[b >> 4];
    uuid += kHex[b & 15];
  }
  return uuid;
}

}  // namespace moemesh
