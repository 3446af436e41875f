#include "tools/moemesh/cli.h"

#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/common/status_macros.h"
#include "core/model/safetensors.h"

namespace moemesh {

absl::StatusOr<std::vector<int>> ParseTokenIds(const std::string& text) {
  std::vector<int> ids;
  if (absl::StripAsciiWhitespace(text).empty()) return ids;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    part = absl::StripAsciiWhitespace(part);
    int v;
    if (!absl::SimpleAtoi(part, &v) || v < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "bad token id \"", part, "\": expected comma-separated non-negative integers"));
    }
    ids.push_back(v);
  }
  return ids;
}

absl::Status RunGenerate(const GenerateCommand& cmd, std::ostream& out) {
  MM_RETURN_IF_ERROR(cmd.params.Validate());
  MM_ASSIGN_OR_RETURN(auto engine, Engine::Create(cmd.model_dir, cmd.engine));
  MM_ASSIGN_OR_RETURN(GenerateResult r, engine->Generate(cmd.prompt_ids, cmd.params));
  const char* reason = r.finish_reason == FinishReason::kStop ? "stop" : "length";
  if (cmd.json) {
    out << "{\"token_ids\": [" << absl::StrJoin(r.tokens, ", ") << "], \"finish_reason\": \""
        << reason << "\"}\n";
  } else {
    out << absl::StrJoin(r.tokens, ",") << "\n";
  }
  return absl::OkStatus();
}

absl::Status RunScore(const ScoreCommand& cmd, std::ostream& out) {
  if (cmd.logits_out.empty()) return absl::InvalidArgumentError("--logits-out FILE is required");
  MM_ASSIGN_OR_RETURN(auto engine, Engine::Create(cmd.model_dir, cmd.engine));
  MM_ASSIGN_OR_RETURN(std::vector<float> logits, engine->Score(cmd.prompt_ids));
  TensorToWrite t;
  t.name = "logits";
  t.dtype = DType::kF32;
  t.shape = {static_cast<int64_t>(cmd.prompt_ids.size()), engine->config().vocab_size};
  t.bytes.resize(logits.size() * sizeof(float));
  std::memcpy(t.bytes.data(), logits.data(), t.bytes.size());
  MM_RETURN_IF_ERROR(WriteSafetensors(cmd.logits_out, {t}));
  out << "wrote logits [" << t.shape[0] << ", " << t.shape[1] << "] to " << cmd.logits_out << "\n";
  return absl::OkStatus();
}

}  // namespace moemesh
