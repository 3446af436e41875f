#ifndef MOEMESH_SERVICES_EXPERT_CUDA_IPC_SERVER_H_
#define MOEMESH_SERVICES_EXPERT_CUDA_IPC_SERVER_H_

#include <memory>

#include "absl/status/statusor.h"
#include "services/expert/device_rows.h"

namespace moemesh {

class ExpertWorker;

// The worker's side of the cuda-ipc transport (DeviceRowsServer) on the
// GPU of `worker`'s experts: each session is one device allocation (rows,
// routing, combined rows) exported by cudaIpcGetMemHandle, the router's
// event and the worker's own. Every session's work runs on one stream of
// the worker's, in the order the requests come. FAILED_PRECONDITION unless
// the worker's experts are on a GPU, whole layers of them.
absl::StatusOr<std::unique_ptr<DeviceRowsServer>> MakeCudaIpcServer(ExpertWorker* worker);

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_EXPERT_CUDA_IPC_SERVER_H_
