#ifndef MOEMESH_SERVICES_COMMON_HOST_ID_H_
#define MOEMESH_SERVICES_COMMON_HOST_ID_H_

#include <string>

namespace moemesh {

// This host's identity for transports that only work on one host (CUDA
// IPC): the running kernel's boot id, which every process and container on
// the host shares; empty where it cannot be read (then no such transport).
std::string HostId();

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_COMMON_HOST_ID_H_
