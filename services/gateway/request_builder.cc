#include "services/gateway/request_builder.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/engine/request.h"
#include "core/tokenizer/tokenizer.h"
#include "services/common/generate_params_proto.h"

namespace moemesh {

absl::Status NoTokenizer(absl::string_view what) {
  return absl::FailedPreconditionError(
      absl::StrCat("this model is served without a tokenizer: ", what, " need one; send token_ids"));
}

absl::Status CheckModelName(const std::string& name, const ServedModel& model) {
  if (name.empty() || name == model.name) return absl::OkStatus();
  // Only the name's beginning is echoed: a client's garbage is not sent back whole.
  constexpr size_t kEcho = 64;
  const std::string shown = name.size() <= kEcho ? name : absl::StrCat(name.substr(0, kEcho), "...");
  return absl::NotFoundError(absl::StrCat("model \"", shown, "\" is not served here; this gateway serves \"",
                                          model.name, "\" (see ListModels)"));
}

absl::StatusOr<v1::RouterGenerateRequest> BuildRouterRequest(const v1::GenerateRequest& request,
                                                             const Tokenizer* tokenizer, const ServedModel& model) {
  MM_RETURN_IF_ERROR(CheckModelName(request.model(), model));
  // Cheap bounds first: a prompt that cannot fit is not tokenized.
  if (model.context_length > 0 && request.max_tokens() >= model.context_length) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens (", request.max_tokens(),
                                                   ") with any prompt exceeds the context of ", model.context_length,
                                                   " tokens: it leaves no room for a prompt"));
  }
  std::vector<int> prompt;
  switch (request.prompt_case()) {
    case v1::GenerateRequest::kText: {
      if (request.text().empty()) return absl::InvalidArgumentError("text: the prompt is empty");
      if (tokenizer == nullptr) return NoTokenizer("text prompts");
      if (model.context_length > 0 &&
          request.text().size() > static_cast<size_t>(model.context_length) * kMaxBytesPerToken) {
        return absl::InvalidArgumentError(absl::StrCat(
            "text: ", request.text().size(), " bytes cannot fit the context of ", model.context_length,
            " tokens (no token is longer than ", kMaxBytesPerToken, " bytes)"));
      }
      bool special = request.has_add_special_tokens() ? request.add_special_tokens() : true;
      MM_ASSIGN_OR_RETURN(prompt, tokenizer->Encode(request.text(), special));
      if (prompt.empty()) return absl::InvalidArgumentError("text: the prompt has no tokens");
      break;
    }
    case v1::GenerateRequest::kTokenIds:
      prompt.assign(request.token_ids().ids().begin(), request.token_ids().ids().end());
      break;
    default:
      return absl::InvalidArgumentError("prompt: give text or token_ids");
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
  // The engine's own check, with the public API's field names.
  RequestLimits limits;
  limits.vocab_size = model.vocab_size;
  limits.context_length = model.context_length;
  RequestFieldNames names;
  names.prompt = request.prompt_case() == v1::GenerateRequest::kText ? "text" : "token_ids";
  names.max_new_tokens = "max_tokens";
  names.sampling_prefix = "sampling: ";
  MM_RETURN_IF_ERROR(ValidateRequest(prompt, GenerateParamsFromProto(out), limits, names));
  return out;
}

}  // namespace moemesh
