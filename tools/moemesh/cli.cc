#include "tools/moemesh/cli.h"

#include <cmath>
#include <functional>
#include <iostream>
#include <memory>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/common/file_util.h"
#include "core/common/status_macros.h"
#include "core/engine/perplexity.h"
#include "core/engine/request.h"
#include "core/model/config.h"
#include "core/model/safetensors.h"
#include "services/expert_client/remote_expert_executor.h"
#include "core/tokenizer/streaming_detokenizer.h"
#include "core/tokenizer/tokenizer.h"
#include "core/tokenizer/utf8.h"
#include "nlohmann/json.hpp"

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

namespace {

// The expert workers' executor, or null where there are none (the engine
// then runs the experts itself). Warnings (a worker that does not take the
// rows' dtype asked for) go to stderr.
absl::StatusOr<std::unique_ptr<ExpertExecutor>> ConnectExperts(const ExpertWorkers& experts, int hidden_size) {
  RemoteExpertExecutor::Options options;
  MM_ASSIGN_OR_RETURN(options.rows, RemoteExpertExecutor::ParseRows(experts.rows));
  MM_ASSIGN_OR_RETURN(options.answers, RemoteExpertExecutor::ParseAnswers(experts.answers));
  if (experts.addresses.empty()) {
    if (options.rows != RemoteExpertExecutor::Rows::kAuto || options.answers != RemoteExpertExecutor::Answers::kF32) {
      return absl::InvalidArgumentError(
          "--expert-rows and --expert-answers need --experts (without workers no rows travel)");
    }
    return nullptr;
  }
  MM_ASSIGN_OR_RETURN(auto shards, RemoteExpertExecutor::ParseAddresses(experts.addresses));
  options.connect_timeout_ms = experts.connect_timeout_ms;
  options.warn = [](const std::string& m) { std::cerr << "warning: " << m << "\n"; };
  MM_ASSIGN_OR_RETURN(std::unique_ptr<RemoteExpertExecutor> remote,
                      RemoteExpertExecutor::Connect(shards, hidden_size, options));
  return std::unique_ptr<ExpertExecutor>(std::move(remote));
}

}  // namespace

absl::Status RunGenerate(const GenerateCommand& cmd, std::ostream& out) {
  MM_RETURN_IF_ERROR(cmd.params.sampling.Validate());  // the rest once the prompt is known
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<int> prompt = cmd.prompt_ids;
  if (prompt.empty() && cmd.prompt.empty()) {
    return absl::InvalidArgumentError("give a prompt: --prompt TEXT or --prompt-ids 1,2,3");
  }
  if (!cmd.prompt.empty() && !prompt.empty()) {
    return absl::InvalidArgumentError("give --prompt or --prompt-ids, not both");
  }
  // Text needs a tokenizer; with ids it is optional (for "text" output).
  std::string tok_path = cmd.tokenizer_path.empty() ? cmd.model_dir : cmd.tokenizer_path;
  auto loaded = LoadTokenizer(tok_path);
  if (loaded.ok()) {
    tokenizer = std::move(*loaded);
  } else if (!cmd.prompt.empty() || !cmd.tokenizer_path.empty() || !absl::IsNotFound(loaded.status())) {
    return loaded.status();
  }
  if (!cmd.prompt.empty()) {
    MM_ASSIGN_OR_RETURN(prompt, tokenizer->Encode(cmd.prompt, /*add_special_tokens=*/true));
  }
  // The engine's own check, before minutes of loading weights.
  MM_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(cmd.model_dir));
  RequestLimits limits;
  limits.vocab_size = config.vocab_size;
  MM_RETURN_IF_ERROR(ValidateRequest(prompt, cmd.params, limits));
  MM_ASSIGN_OR_RETURN(std::unique_ptr<ExpertExecutor> remote, ConnectExperts(cmd.experts, config.hidden_size));
  MM_ASSIGN_OR_RETURN(auto engine,
                      CreateEngineWithProgress(cmd.model_dir, cmd.engine, std::move(remote), cmd.progress));
  std::unique_ptr<StreamingDetokenizer> stream;
  if (tokenizer) stream = std::make_unique<StreamingDetokenizer>(tokenizer.get(), true);
  std::string text;
  absl::Status stream_status;
  auto on_token = [&](int id) {
    if (!stream || !stream_status.ok()) return;
    auto piece = stream->Add(id);
    if (!piece.ok()) {
      stream_status = piece.status();
      return;
    }
    text += *piece;
    if (!cmd.json) out << *piece << std::flush;  // stream as tokens arrive
  };
  MM_ASSIGN_OR_RETURN(GenerateResult r, engine->Generate(prompt, cmd.params, on_token));
  MM_RETURN_IF_ERROR(stream_status);
  if (stream) {
    MM_ASSIGN_OR_RETURN(std::string rest, stream->Finish());
    text += rest;
    if (!cmd.json) out << rest;
  }
  const char* reason = r.finish_reason == FinishReason::kStop ? "stop" : "length";
  if (cmd.json) {
    nlohmann::ordered_json j = {{"token_ids", r.tokens}};
    if (tokenizer) j["text"] = text;
    j["finish_reason"] = reason;
    out << j.dump() << "\n";
  } else if (!tokenizer) {
    out << absl::StrJoin(r.tokens, ",") << "\n";
  } else {
    out << "\n";
  }
  return absl::OkStatus();
}

namespace {

// Calls fn(json, line_number) for each non-blank line of `in`.
absl::Status ForEachJsonLine(std::istream& in,
                             const std::function<absl::Status(const nlohmann::json&, int)>& fn) {
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    if (size_t bad = FirstInvalidUtf8(line); bad != line.size()) {
      return absl::InvalidArgumentError(absl::StrCat("line ", n, ": input is not valid UTF-8 (byte offset ", bad, ")"));
    }
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat("line ", n, ": not a JSON object"));
    }
    absl::Status st = fn(j, n);
    if (!st.ok()) return absl::Status(st.code(), absl::StrCat("line ", n, ": ", st.message()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RunTokenize(const TokenizeCommand& cmd, std::istream& in, std::ostream& out) {
  MM_ASSIGN_OR_RETURN(auto tok, LoadTokenizer(cmd.tokenizer_path));
  return ForEachJsonLine(in, [&](const nlohmann::json& j, int) -> absl::Status {
    if (!j.contains("text") || !j["text"].is_string()) {
      return absl::InvalidArgumentError("expected {\"text\": \"...\"}");
    }
    MM_ASSIGN_OR_RETURN(std::vector<int> ids, tok->Encode(j["text"].get<std::string>(), cmd.add_special_tokens));
    out << nlohmann::json({{"ids", ids}}).dump() << "\n";
    return absl::OkStatus();
  });
}

absl::Status RunDetokenize(const TokenizeCommand& cmd, std::istream& in, std::ostream& out) {
  MM_ASSIGN_OR_RETURN(auto tok, LoadTokenizer(cmd.tokenizer_path));
  return ForEachJsonLine(in, [&](const nlohmann::json& j, int) -> absl::Status {
    if (!j.contains("ids") || !j["ids"].is_array()) return absl::InvalidArgumentError("expected {\"ids\": [...]}");
    std::vector<int> ids;
    for (const auto& v : j["ids"]) {
      if (!v.is_number_integer()) return absl::InvalidArgumentError("ids must be integers");
      ids.push_back(v.get<int>());
    }
    MM_ASSIGN_OR_RETURN(std::string text, tok->Decode(ids, cmd.skip_special_tokens));
    out << nlohmann::json({{"text", text}}).dump() << "\n";
    return absl::OkStatus();
  });
}

absl::Status RunScore(const ScoreCommand& cmd, std::ostream& out) {
  if (cmd.logits_out.empty()) return absl::InvalidArgumentError("--logits-out FILE is required");
  MM_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(cmd.model_dir));
  RequestLimits limits;
  limits.vocab_size = config.vocab_size;
  // The prompt part of the engine's check (the default params pass).
  MM_RETURN_IF_ERROR(ValidateRequest(cmd.prompt_ids, GenerateParams(), limits));
  MM_ASSIGN_OR_RETURN(auto engine, CreateEngineWithProgress(cmd.model_dir, cmd.engine, nullptr, cmd.progress));
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

absl::Status RunEval(const EvalCommand& cmd, std::ostream& out) {
  if (cmd.dataset.empty()) return absl::InvalidArgumentError("--dataset FILE is required");
  MM_ASSIGN_OR_RETURN(std::string text, ReadFile(cmd.dataset));
  std::vector<std::vector<int>> seqs;
  std::unique_ptr<Tokenizer> tokenizer;  // for {"text"} lines, loaded at the first
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line.begin(), line.end(), nullptr, false);
    const bool has_text = !j.is_discarded() && j.is_object() && j.contains("text") && j["text"].is_string();
    if (j.is_discarded() || !j.is_object() || (!has_text && (!j.contains("ids") || !j["ids"].is_array()))) {
      return absl::InvalidArgumentError(absl::StrCat(
          cmd.dataset, ":", line_no, ": expected a JSON object with an \"ids\" list or a \"text\" string"));
    }
    if (has_text) {
      // As a prompt is tokenized: the model's tokenizer, its special tokens
      // (a BOS) added.
      if (tokenizer == nullptr) {
        absl::StatusOr<std::unique_ptr<Tokenizer>> t = LoadTokenizer(cmd.model_dir);
        if (!t.ok()) {
          return absl::Status(t.status().code(), absl::StrCat(cmd.dataset, ":", line_no, ": a \"text\" line needs ",
                                                              "the model's tokenizer: ", t.status().message()));
        }
        tokenizer = std::move(*t);
      }
      absl::StatusOr<std::vector<int>> ids = tokenizer->Encode(j["text"].get<std::string>(), true);
      if (!ids.ok()) {
        return absl::Status(ids.status().code(),
                            absl::StrCat(cmd.dataset, ":", line_no, ": ", ids.status().message()));
      }
      if (ids->size() < 2) {
        return absl::InvalidArgumentError(
            absl::StrCat(cmd.dataset, ":", line_no, ": the text is ", ids->size(), " token(s); it needs at least 2"));
      }
      seqs.push_back(std::move(*ids));
      continue;
    }
    std::vector<int> ids;
    for (const auto& v : j["ids"]) {
      if (!v.is_number_integer()) {
        return absl::InvalidArgumentError(
            absl::StrCat(cmd.dataset, ":", line_no, ": ids must be integers"));
      }
      ids.push_back(v.get<int>());
    }
    if (ids.size() < 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(cmd.dataset, ":", line_no, ": a sequence needs at least 2 tokens"));
    }
    seqs.push_back(std::move(ids));
  }
  if (seqs.empty()) return absl::InvalidArgumentError(absl::StrCat(cmd.dataset, ": no sequences"));
  MM_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(cmd.model_dir));
  MM_ASSIGN_OR_RETURN(std::unique_ptr<ExpertExecutor> remote, ConnectExperts(cmd.experts, config.hidden_size));
  MM_ASSIGN_OR_RETURN(auto engine,
                      CreateEngineWithProgress(cmd.model_dir, cmd.engine, std::move(remote), cmd.progress));
  double nll = 0;
  int64_t count = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    auto logits = engine->Score(seqs[i]);
    if (!logits.ok()) {
      return absl::Status(logits.status().code(),
                          absl::StrCat("sequence ", i + 1, ": ", logits.status().message()));
    }
    nll += SequenceNll(logits->data(), engine->config().vocab_size, seqs[i]);
    count += static_cast<int64_t>(seqs[i].size()) - 1;
  }
  nlohmann::json r = {{"perplexity", std::exp(nll / count)},
                      {"nll_sum", nll},
                      {"predicted_tokens", count},
                      {"sequences", seqs.size()}};
  out << r.dump() << "\n";
  return absl::OkStatus();
}

}  // namespace moemesh
