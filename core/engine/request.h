#ifndef MOEMESH_CORE_ENGINE_REQUEST_H_
#define MOEMESH_CORE_ENGINE_REQUEST_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace moemesh {

// The request contract: what a generation request may ask for, each
// parameter's one default, and the one check (ValidateRequest) that the
// gateway, the router and the engine all run. A small library of its own,
// so that a service that only validates requests (the gateway) links no
// model, kernel or engine code (docs/ARCHITECTURE.md, "Dependency rules").

// Sampling with vLLM's meaning and vLLM's and OpenAI's defaults. Unset
// fields on the wire take these defaults, and so do the CLI's flags.
struct SamplingParams {
  float temperature = 1.0f;         // 0 is greedy
  int top_k = 0;                    // 0: off
  float top_p = 1.0f;               // 1: off
  float min_p = 0.0f;               // 0: off
  float repetition_penalty = 1.0f;  // prompt and output tokens; 1: off
  float presence_penalty = 0.0f;    // output tokens
  float frequency_penalty = 0.0f;   // output tokens
  std::optional<uint64_t> seed;     // same seed, same tokens

  // INVALID_ARGUMENT naming the parameter and its valid range.
  absl::Status Validate() const;
};

struct GenerateParams {
  int max_new_tokens = 16;
  SamplingParams sampling;
  std::vector<int> stop_token_ids;  // in addition to the model's EOS ids
  bool ignore_eos = false;
  int logprobs = 0;  // top-n log probabilities per token, [0, kMaxLogprobs]

  static constexpr int kMaxLogprobs = 20;
};

enum class FinishReason { kLength, kStop };

// One entry of a top-n list of log probabilities.
struct TokenLogprob {
  int token = 0;
  float logprob = 0;
};

// What a request is checked against.
struct RequestLimits {
  int vocab_size = 0;
  int context_length = 0;  // prompt + max_new_tokens must fit; 0: no limit here
};

// How the caller's API spells the fields, so that an error names what the
// user sent (the public API says token_ids and max_tokens, the engine
// prompt and max_new_tokens).
struct RequestFieldNames {
  const char* prompt = "prompt";
  const char* max_new_tokens = "max_new_tokens";
  const char* stop_token_ids = "stop_token_ids";
  const char* sampling_prefix = "";  // before a sampling parameter's error
};

// INVALID_ARGUMENT, naming the field, for a request that can never succeed:
// an empty prompt, token ids outside the vocabulary (prompt or stop ids),
// max_new_tokens < 1, prompt + max_new_tokens beyond the context, sampling
// parameters out of range, logprobs outside [0, kMaxLogprobs].
absl::Status ValidateRequest(absl::Span<const int> prompt, const GenerateParams& params, const RequestLimits& limits,
                             const RequestFieldNames& names = RequestFieldNames());

// INVALID_ARGUMENT, naming `field`, for the first id outside [0, vocab_size).
absl::Status ValidateTokenIds(absl::Span<const int> ids, int vocab_size, const char* field);
// INVALID_ARGUMENT, naming `field`, for an empty prompt or one with ids
// outside the vocabulary (ValidateRequest's first check; Score's only one).
absl::Status ValidatePrompt(absl::Span<const int> prompt, int vocab_size, const char* field = "prompt");

}  // namespace moemesh

#endif  // MOEMESH_CORE_ENGINE_REQUEST_H_
