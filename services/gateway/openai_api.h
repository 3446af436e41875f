#ifndef MOEMESH_SERVICES_GATEWAY_OPENAI_API_H_
#define MOEMESH_SERVICES_GATEWAY_OPENAI_API_H_

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "moemesh/v1/gateway.pb.h"
#include "nlohmann/json.hpp"

namespace moemesh {

// The OpenAI-compatible HTTP API's translation, apart from any HTTP server
// (docs/OPERATIONS.md, "HTTP API"): request bodies to the public gRPC
// request, answers to OpenAI's JSON.

// A parsed POST /v1/completions or /v1/chat/completions body.
struct CompletionRequest {
  v1::GenerateRequest request;  // a chat request's prompt is set once rendered
  int n = 1;  // choices, 1 to kMaxChoices
  bool echo = false;  // each choice's text begins with the prompt's
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  // Chat: the chat template's variables (messages, tools, documents,
  // add_generation_prompt, chat_template_kwargs' entries), the final
  // message to continue rather than answer, and max_tokens left out (0: the
  // rest of the context, as vLLM).
  bool chat = false;
  nlohmann::ordered_json template_context;
  bool continue_final_message = false;
  int top_logprobs = 0;  // chat: logprobs is a flag, top_logprobs the count
};

inline constexpr int kMaxChoices = 16;

// INVALID_ARGUMENT naming the field (OpenAI's "param") for malformed JSON,
// a field of the wrong type, n outside [1, kMaxChoices] (or with
// continue_session), or what this server does not do yet (echo with
// logprobs). Unknown fields are ignored, as OpenAI clients send
// their own. Range checks are the gateway's (BuildRouterRequest).
absl::StatusOr<CompletionRequest> ParseCompletionRequest(const std::string& body);
// The same for chat: messages (content a string, or text parts, which are
// joined with newlines), tools, tool_choice "none" or "auto" (moemesh does
// not parse tool calls out of the answer), max_completion_tokens or
// max_tokens, logprobs and top_logprobs, add_generation_prompt (default
// true), continue_final_message, chat_template_kwargs. A tool call's
// arguments given as a JSON string become an object, as templates expect.
absl::StatusOr<CompletionRequest> ParseChatRequest(const std::string& body);
// The chat template's variables for /tokenize's `messages` form.
absl::StatusOr<nlohmann::ordered_json> ChatTemplateContext(const nlohmann::ordered_json& body);
// A rendered chat prompt continued at the final message: the text cut
// after that message's content. INVALID_ARGUMENT when the template does not
// show it.
absl::StatusOr<std::string> CutAfterFinalMessage(const std::string& rendered, const nlohmann::ordered_json& messages);

// The parts of a completion answer, as they come out of Gateway::Generate.
struct CompletionIds {
  std::string id;     // "cmpl-..." or "chatcmpl-..."
  int64_t created;    // Unix seconds
  std::string model;  // the served model's name
  bool chat = false;  // chat.completion objects
};
CompletionIds NewCompletionIds(const std::string& model, bool chat = false);

// "stop", "length", or nullptr while not finished.
const char* FinishReasonName(v1::FinishReason reason);

// Log probabilities gathered from responses, in completions' legacy form
// (tokens, token_logprobs, top_logprobs, text_offset) or chat's
// ({"content": [{token, logprob, bytes, top_logprobs}]}, at most `top` of
// them). `token_text` gives a token id's text.
class LogprobsJson {
 public:
  explicit LogprobsJson(std::function<std::string(int)> token_text, bool chat = false, int top = 0)
      : token_text_(std::move(token_text)), chat_(chat), top_n_(top) {}
  // Adds a response's tokens; their text offsets continue from `offset`
  // (the completion's text so far, in bytes).
  void Add(const v1::GenerateResponse& response, size_t offset);
  bool empty() const { return tokens_.empty(); }
  // The JSON object; then starts over.
  std::string Take();

 private:
  std::string TakeChat();
  std::function<std::string(int)> token_text_;
  bool chat_;
  int top_n_;
  std::vector<std::string> tokens_;
  std::vector<float> logprobs_;
  std::vector<std::vector<std::pair<std::string, float>>> top_;
  std::vector<size_t> offsets_;
};

// One choice of a completion; `logprobs` is a JSON object or empty (null).
// A chat stream's first chunk of a choice says the role.
struct CompletionChoice {
  std::string text;
  v1::FinishReason reason = v1::FINISH_REASON_UNSPECIFIED;
  std::string logprobs;
  bool role = false;
};
// A whole (not streamed) completion object, its choices indexed in order.
std::string CompletionJson(const CompletionIds& ids, const std::vector<CompletionChoice>& choices,
                           const v1::Usage& usage);
// One server-sent event of a stream: "data: {chunk}\n\n", for choice
// `index`. UsageChunkEvent is the last before [DONE] with include_usage
// (its `choices` is empty, as OpenAI sends it).
std::string CompletionChunkEvent(const CompletionIds& ids, int index, const CompletionChoice& choice);
std::string UsageChunkEvent(const CompletionIds& ids, const v1::Usage& usage);
inline constexpr char kDoneEvent[] = "data: [DONE]\n\n";

// The HTTP status for a gateway error, and OpenAI's error object for it:
// {"error": {"message", "type", "param", "code"}}.
int HttpStatusFor(const absl::Status& status);
std::string ErrorJson(const absl::Status& status);

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_GATEWAY_OPENAI_API_H_
