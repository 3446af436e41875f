#include "services/gateway/session.h"

#include "absl/strings/str_cat.h"

namespace moemesh {

absl::StatusOr<SessionTurn> ComposeSessionTurn(const SessionHistory& history, absl::Span<const int> turn,
                                               int max_tokens, int window) {
  const int need = static_cast<int>(turn.size()) + max_tokens;
  if (need > window) {
    return absl::InvalidArgumentError(absl::StrCat("the prompt (", turn.size(), " tokens) and max_tokens (", max_tokens,
                                                   ") exceed the session window of ", window,
                                                   " tokens even without the session's history"));
  }
  std::vector<int> starts = history.turn_starts;
  if (starts.empty() && !history.tokens.empty()) starts = {0};
  const int total = static_cast<int>(history.tokens.size());
  // The first turn kept: the oldest whose start leaves room.
  size_t first = 0;
  while (first < starts.size() && total - starts[first] + need > window) ++first;
  const int cut = first < starts.size() ? starts[first] : total;
  SessionTurn t;
  t.dropped_tokens = cut;
  t.kept.version = history.version;
  t.kept.tokens.assign(history.tokens.begin() + cut, history.tokens.end());
  for (size_t i = first; i < starts.size(); ++i) t.kept.turn_starts.push_back(starts[i] - cut);
  t.prompt = t.kept.tokens;
  t.prompt.insert(t.prompt.end(), turn.begin(), turn.end());
  return t;
}

SessionHistory NextHistory(const SessionTurn& turn, absl::Span<const int> answer) {
  SessionHistory next = turn.kept;
  next.turn_starts.push_back(static_cast<int>(next.tokens.size()));
  next.tokens = turn.prompt;
  next.tokens.insert(next.tokens.end(), answer.begin(), answer.end());
  return next;
}

}  // namespace moemesh
