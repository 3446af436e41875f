#ifndef MOEMESH_SERVICES_GATEWAY_SESSION_H_
#define MOEMESH_SERVICES_GATEWAY_SESSION_H_

#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "services/kvcache_client/session_client.h"

namespace moemesh {

// One turn of a session: what goes to the router, and the history it
// continues (the turns kept).
struct SessionTurn {
  std::vector<int> prompt;  // the kept history, then this turn's prompt
  SessionHistory kept;      // the loaded history less the turns left out; its version the loaded one's
  int dropped_tokens = 0;   // of the loaded history, left out
};

// The truncation rule of sessions (docs/OPERATIONS.md, "Sessions"): the
// oldest whole turns of `history` are left out until the rest, `turn` and
// `max_tokens` fit `window` tokens. A history without turn starts is one
// turn. INVALID_ARGUMENT when `turn` and `max_tokens` alone exceed it.
absl::StatusOr<SessionTurn> ComposeSessionTurn(const SessionHistory& history, absl::Span<const int> turn,
                                               int max_tokens, int window);

// The history to save after the answer: the kept turns, then this turn's
// prompt and answer as a new turn.
SessionHistory NextHistory(const SessionTurn& turn, absl::Span<const int> answer);

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_GATEWAY_SESSION_H_
