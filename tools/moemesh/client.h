#ifndef MOEMESH_TOOLS_MOEMESH_CLIENT_H_
#define MOEMESH_TOOLS_MOEMESH_CLIENT_H_

#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "moemesh/v1/gateway.pb.h"

namespace moemesh {

// `moemesh client ...`: calls a gateway's public API.
struct ClientOptions {
  std::string target;   // gateway HOST:PORT
  int timeout_ms = 0;   // call deadline; 0: none
  std::string api_key;  // sent as "authorization: Bearer KEY"; empty: none
};

// Streams the answer: in text mode each text delta is printed (and
// flushed) as it arrives; with `json` one object is printed at the end:
// {"token_ids": [...], "text": "...", "finish_reason": "length"|"stop"|"abort",
//  "usage": {"prompt_tokens": n, "completion_tokens": m}} plus "logprobs"
// when asked. The gateway's errors come back as absl::Status.
absl::Status RunClientGenerate(const ClientOptions& opt, const v1::GenerateRequest& request, bool json,
                               std::ostream& out);
// {"ids": [...]}
absl::Status RunClientTokenize(const ClientOptions& opt, const v1::TokenizeRequest& request, std::ostream& out);
// {"text": "..."}
absl::Status RunClientDetokenize(const ClientOptions& opt, const v1::DetokenizeRequest& request, std::ostream& out);
// One JSON object per served model.
absl::Status RunClientModels(const ClientOptions& opt, std::ostream& out);
// Whether the service at opt.target serves `service` ("": the whole
// server), by grpc.health.v1 (CheckHealth), within opt.timeout_ms or 5 s.
absl::StatusOr<bool> RunClientHealth(const ClientOptions& opt, const std::string& service);

}  // namespace moemesh

#endif  // MOEMESH_TOOLS_MOEMESH_CLIENT_H_
