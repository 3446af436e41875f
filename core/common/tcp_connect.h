#ifndef MOEMESH_CORE_COMMON_TCP_CONNECT_H_
#define MOEMESH_CORE_COMMON_TCP_CONNECT_H_

#include <string>

#include "absl/status/statusor.h"

namespace moemesh {

// A blocking TCP connection to host:port (any address family the name
// resolves to), as a close-on-exec file descriptor the caller owns.
// UNAVAILABLE, naming host:port, when it cannot be resolved or reached.
absl::StatusOr<int> TcpConnect(const std::string& host, int port);

// A loopback TCP port that nothing listens on at the time of the call (for
// servers that cannot be told to pick one themselves); UNAVAILABLE when the
// kernel gives none.
absl::StatusOr<int> FreeLoopbackPort();

}  // namespace moemesh

#endif  // MOEMESH_CORE_COMMON_TCP_CONNECT_H_
