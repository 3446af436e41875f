#include "services/gateway/request_builder.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/engine/engine.h"
#include "core/tokenizer/tokenizer.h"
#include "services/common/generate_params_proto.h"

namespace moemesh {

absl::Status NoTokenizer(absl::string_view what) {
  return absl::FailedPreconditionError(
      absl::StrCat("this model is served without a tokenizer: ", what, " need one; send token_ids"));
}

absl::Status CheckModelName(const std::string& name, const ServedModel& model) {
  if (name.empty() || name == model.name) return absl::OkStatus();
  return absl::NotFoundError(absl::StrCat("model \"", name, "\" is not served here; this gateway serves \"",
                                          model.name, "\" (see ListModels)"));
}

absl::StatusOr<v1::RouterGenerateRequest> BuildRouterRequest(const v1::GenerateRequest& request,
                                                             const Tokenizer* tokenizer, const ServedModel& model) {
  MM_RETURN_IF_ERROR(CheckModelName(request.model(), model));
  std::vector<int> prompt;
  switch (request.prompt_case()) {
    case v1::GenerateRequest::kText: {
      if (request.text().empty()) return absl::InvalidArgumentError("text: the prompt is empty");
      if (tokenizer == nullptr) return NoTokenizer("text prompts");
      bool special = request.has_add_special_tokens() ? request.add_special_tokens() : true;
      MM_ASSIGN_OR_RETURN(prompt, tokenizer->Encode(request.text(), special));
      if (prompt.empty()) return absl::InvalidArgumentError("text: the prompt has no tokens");
      break;
    }
    case v1::GenerateRequest::kTokenIds:
      prompt.assign(request.token_ids().ids().begin(), request.token_ids().ids().end());
      if (prompt.empty()) return absl::InvalidArgumentError("token_ids: the prompt is empty");
      for (int t : prompt) {
        if (t < 0 || t >= model.vocab_size) {
          return absl::InvalidArgumentError(
              absl::StrCat("token_ids: ", t, " is outside the vocabulary [0, ", model.vocab_size, ")"));
        }
      }
      break;
    default:
      return absl::InvalidArgumentError("prompt: give text or token_ids");
  }
  if (request.max_tokens() < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens must be >= 1, got ", request.max_tokens()));
  }
  const int64_t total = static_cast<int64_t>(prompt.size()) + request.max_tokens();
  if (total > model.context_length) {
    return absl::InvalidArgumentError(absl::StrCat("prompt (", prompt.size(), " tokens) + max_tokens (",
                                                   request.max_tokens(), ") exceeds the context of ",
                                                   model.context_length, " tokens; shorten one of them"));
  }
  if (absl::Status st = SamplingFromProto(request.sampling()).Validate(); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("sampling: ", st.message()));
  }
  if (request.logprobs() < 0 || request.logprobs() > GenerateParams::kMaxLogprobs) {
    return absl::InvalidArgumentError(
        absl::StrCat("logprobs must be in [0, ", GenerateParams::kMaxLogprobs, "], got ", request.logprobs()));
  }
  if (request.stop_size() > kMaxStopSequences) {
    return absl::InvalidArgumentError(absl::StrCat("stop: at most ", kMaxStopSequences, " stop sequences"));
  }
  if (request.stop_size() > 0 && tokenizer == nullptr) return NoTokenizer("stop sequences");
  for (const std::string& s : request.stop()) {
    if (s.empty() || s.size() > static_cast<size_t>(kMaxStopSequenceBytes)) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop: each stop sequence must have 1 to ", kMaxStopSequenceBytes, " bytes"));
    }
  }
  for (int t : request.stop_token_ids()) {
    if (t < 0 || t >= model.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop_token_ids: ", t, " is outside the vocabulary [0, ", model.vocab_size, ")"));
    }
  }
  if (request.session_id().size() > static_cast<size_t>(kMaxSessionIdBytes)) {
    return absl::InvalidArgumentError(absl::StrCat("session_id: at most ", kMaxSessionIdBytes, " bytes"));
  }
  v1::RouterGenerateRequest out;
  out.mutable_prompt_ids()->Add(prompt.begin(), prompt.end());
  *out.mutable_sampling() = request.sampling();
  out.set_max_tokens(request.max_tokens());
  *out.mutable_stop_token_ids() = request.stop_token_ids();
  out.set_ignore_eos(request.ignore_eos());
  out.set_logprobs(request.logprobs());
  return out;
}

}  // namespace moemesh
