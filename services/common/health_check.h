#ifndef MOEMESH_SERVICES_COMMON_HEALTH_CHECK_H_
#define MOEMESH_SERVICES_COMMON_HEALTH_CHECK_H_

#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace grpc {
class Channel;
}  // namespace grpc

namespace moemesh {

// grpc.health.v1.Health/Check of `service` ("": the whole server) over
// `channel`, within `timeout`: true where it is SERVING, false where not
// (NOT_SERVING: starting, draining). An unknown service is NOT_FOUND; a
// server not reached, UNAVAILABLE or DEADLINE_EXCEEDED. What `moemesh
// client health` and exec probes ask (the messages are encoded here:
// Debian's gRPC ships no health proto header).
absl::StatusOr<bool> CheckHealth(const std::shared_ptr<grpc::Channel>& channel, absl::string_view service,
                                 absl::Duration timeout);

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_COMMON_HEALTH_CHECK_H_
