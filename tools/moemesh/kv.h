#ifndef MOEMESH_TOOLS_MOEMESH_KV_H_
#define MOEMESH_TOOLS_MOEMESH_KV_H_

#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "tools/moemesh/client.h"

namespace moemesh {

// `moemesh kv ...`: calls a kvcache service (ClientOptions::target is its
// HOST:PORT). Each prints JSON lines; the service's errors come back as
// absl::Status.
// {"blocks", "block_bytes", "capacity_bytes", "sessions", "evictions", "corrupt_reads"}
absl::Status RunKvStats(const ClientOptions& opt, std::ostream& out);
// One {"session_id", "tokens", "version", "updated_unix_ms"} per session, in
// id order after `start_after`, at most `limit`.
absl::Status RunKvSessions(const ClientOptions& opt, const std::string& start_after, int limit, std::ostream& out);
// {"deleted": "ID"}; NOT_FOUND for an unknown session.
absl::Status RunKvDeleteSession(const ClientOptions& opt, const std::string& session_id, std::ostream& out);

}  // namespace moemesh

#endif  // MOEMESH_TOOLS_MOEMESH_KV_H_
