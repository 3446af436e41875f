#ifndef MOEMESH_SERVICES_EXPERT_DEVICE_ROWS_H_
#define MOEMESH_SERVICES_EXPERT_DEVICE_ROWS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace moemesh {
namespace v1 {
class CudaIpcBuffers;
class CudaIpcSetup;
class DispatchRequest;
class DispatchResponse;
}  // namespace v1

// A worker's side of the cuda-ipc transport (docs/ARCHITECTURE.md, "The
// seams"): routers on its host share their rows in GPU memory instead of
// sending them. Made where the worker's experts are on a GPU, whole layers
// of them (CudaIpcServer, in CUDA builds); the service advertises it in
// ShardInfo.cuda_ipc. Thread-safe.
class DeviceRowsServer {
 public:
  // One connection's shared buffers.
  class Session {
   public:
    virtual ~Session() = default;
    // Enqueues `request`'s work (DispatchRequest.ipc) on the worker's GPU,
    // after the router's event, and records the worker's event after it;
    // returns without waiting for it, with response.combined_rows set.
    // INVALID_ARGUMENT / FAILED_PRECONDITION for work that cannot be done.
    virtual absl::Status Run(const v1::DispatchRequest& request, v1::DispatchResponse* response) = 0;
  };
  virtual ~DeviceRowsServer() = default;

  // Allocates the buffers `setup` asks for and fills `buffers` with their
  // handles. INVALID_ARGUMENT for sizes or handles out of range;
  // RESOURCE_EXHAUSTED when the GPU has no room; UNAVAILABLE when the
  // router's event cannot be opened (another host or IPC namespace).
  virtual absl::StatusOr<std::unique_ptr<Session>> Open(const v1::CudaIpcSetup& setup,
                                                        v1::CudaIpcBuffers* buffers) = 0;
  // The GPU the buffers are on, and its UUID (CudaDeviceUuid).
  virtual int device() const = 0;
  virtual std::string device_uuid() const = 0;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_EXPERT_DEVICE_ROWS_H_
