#include "core/engine/request.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace moemesh {

absl::Status SamplingParams::Validate() const {
  auto bad = [](const char* what) { return absl::InvalidArgumentError(what); };
  if (!(temperature >= 0 && std::isfinite(temperature))) return bad("temperature must be >= 0");
  if (top_k < 0) return bad("top_k must be >= 0 (0 disables it)");
  if (!(top_p > 0 && top_p <= 1)) return bad("top_p must be in (0, 1]");
  if (!(min_p >= 0 && min_p <= 1)) return bad("min_p must be in [0, 1]");
  if (!(repetition_penalty > 0 && std::isfinite(repetition_penalty))) {
    return bad("repetition_penalty must be > 0 (1 disables it)");
  }
  if (!(presence_penalty >= -2 && presence_penalty <= 2)) return bad("presence_penalty must be in [-2, 2]");
  if (!(frequency_penalty >= -2 && frequency_penalty <= 2)) return bad("frequency_penalty must be in [-2, 2]");
  return absl::OkStatus();
}

absl::Status ValidateTokenIds(absl::Span<const int> ids, int vocab_size, const char* field) {
  for (int t : ids) {
    if (t < 0 || t >= vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": token id ", t, " is outside the vocabulary [0, ", vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidatePrompt(absl::Span<const int> prompt, int vocab_size, const char* field) {
  if (prompt.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": the prompt is empty; give at least one token"));
  }
  return ValidateTokenIds(prompt, vocab_size, field);
}

absl::Status ValidateRequest(absl::Span<const int> prompt, const GenerateParams& params, const RequestLimits& limits,
                             const RequestFieldNames& names) {
  if (absl::Status st = ValidatePrompt(prompt, limits.vocab_size, names.prompt); !st.ok()) return st;
  if (params.max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(names.max_new_tokens, " must be >= 1, got ", params.max_new_tokens));
  }
  if (limits.context_length > 0 &&
      static_cast<int64_t>(prompt.size()) + params.max_new_tokens > limits.context_length) {
    return absl::InvalidArgumentError(absl::StrCat("prompt (", prompt.size(), " tokens) + ", names.max_new_tokens,
                                                   " (", params.max_new_tokens, ") exceeds the context of ",
                                                   limits.context_length, " tokens; shorten one of them"));
  }
  if (absl::Status st = params.sampling.Validate(); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(names.sampling_prefix, st.message()));
  }
  if (params.logprobs < 0 || params.logprobs > GenerateParams::kMaxLogprobs) {
    return absl::InvalidArgumentError(
        absl::StrCat("logprobs must be in [0, ", GenerateParams::kMaxLogprobs, "], got ", params.logprobs));
  }
  return ValidateTokenIds(params.stop_token_ids, limits.vocab_size, names.stop_token_ids);
}

}  // namespace moemesh
