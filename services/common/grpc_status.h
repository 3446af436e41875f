#ifndef MOEMESH_SERVICES_COMMON_GRPC_STATUS_H_
#define MOEMESH_SERVICES_COMMON_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace moemesh {

// The one conversion between absl::Status (everything inside moemesh) and
// grpc::Status (the wire). Codes map one to one; the message is kept.
grpc::Status ToGrpcStatus(const absl::Status& s);
absl::Status FromGrpcStatus(const grpc::Status& s);

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_COMMON_GRPC_STATUS_H_
