#ifndef MOEMESH_SERVICES_GATEWAY_REQUEST_BUILDER_H_
#define MOEMESH_SERVICES_GATEWAY_REQUEST_BUILDER_H_

#include <string>

#include "absl/status/statusor.h"
#include "moemesh/v1/gateway.pb.h"
#include "moemesh/v1/router.pb.h"

namespace moemesh {

class Tokenizer;

// The model a gateway serves.
struct ServedModel {
  std::string name;          // what clients put in GenerateRequest.model
  std::string architecture;  // config.json model_type
  int vocab_size = 0;
  int context_length = 0;    // prompt + max_tokens must fit
};

// Longest stop sequence and most stop sequences per request: matching is
// done on every token, so both are bounded.
constexpr int kMaxStopSequences = 16;
constexpr int kMaxStopSequenceBytes = 256;
constexpr int kMaxSessionIdBytes = 256;
// No token of a tokenizer moemesh serves is longer: a text prompt of more
// bytes than this many a context token cannot fit, and is refused before it
// is tokenized.
constexpr int kMaxBytesPerToken = 128;

// Checks a public Generate request and turns it into the router's:
// NOT_FOUND for another model's name, INVALID_ARGUMENT (naming the field)
// for anything that can never succeed: no or empty prompt, token ids
// outside the vocabulary, max_tokens < 1, prompt + max_tokens beyond the
// context, sampling parameters out of range, bad stop sequences or stop
// token ids, logprobs outside [0, 20]. A text prompt is tokenized here.
// Without a tokenizer (a model served by token ids only), text prompts
// and stop sequences get FAILED_PRECONDITION.
absl::StatusOr<v1::RouterGenerateRequest> BuildRouterRequest(const v1::GenerateRequest& request,
                                                             const Tokenizer* tokenizer, const ServedModel& model);

// FAILED_PRECONDITION saying that `what` needs a tokenizer.
absl::Status NoTokenizer(absl::string_view what);

// NOT_FOUND unless `name` is empty or the served model's.
absl::Status CheckModelName(const std::string& name, const ServedModel& model);

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_GATEWAY_REQUEST_BUILDER_H_
