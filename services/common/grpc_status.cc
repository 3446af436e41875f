#include "services/common/grpc_status.h"

#include <string>

namespace moemesh {

// absl::StatusCode and grpc::StatusCode share the canonical google.rpc.Code
// numbering, so the cast is exact.
grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

}  // namespace moemesh
