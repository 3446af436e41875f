#ifndef MOEMESH_SERVICES_KVCACHE_CLIENT_SESSION_CLIENT_H_
#define MOEMESH_SERVICES_KVCACHE_CLIENT_SESSION_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/kv/block_hash.h"

namespace moemesh {

// A session's stored conversation.
struct SessionHistory {
  std::vector<int> tokens;
  std::vector<int> turn_starts;  // where each turn begins in tokens
  int64_t version = 0;           // 0: no such session yet
};

// The gateway's side of the kvcache service's session records. With
// several replicas (`addresses` separated by ','), a session lives on the
// one rendezvous hashing of its id picks. Every call is bounded by
// `timeout`. Thread-safe.
class SessionClient {
 public:
  // `root` names the model whose tokens the sessions hold.
  SessionClient(const std::string& addresses, const BlockHash& root, absl::Duration timeout = absl::Seconds(2));
  ~SessionClient();

  // An unknown (or expired) session is empty, version 0.
  absl::StatusOr<SessionHistory> Load(const std::string& session_id);
  // Writes the history if the stored version is still `history.version`
  // (ABORTED if another turn wrote first); returns the new version.
  absl::StatusOr<int64_t> Save(const std::string& session_id, const SessionHistory& history);

 private:
  struct Rpc;
  Rpc& For(const std::string& session_id) const;
  std::vector<std::string> addresses_;
  std::vector<std::unique_ptr<Rpc>> rpcs_;
  const BlockHash root_;
  const absl::Duration timeout_;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_KVCACHE_CLIENT_SESSION_CLIENT_H_
