#include "services/gateway/openai_api.h"

#include <chrono>
#include <cmath>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

using Json = nlohmann::json;

absl::Status Bad(const std::string& param, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(param, ": ", what));
}

// The request's own field names in the gateway's messages.
std::string OpenAiMessage(absl::string_view message) {
  for (const char* prefix : {"text: ", "token_ids: "}) {
    if (absl::StartsWith(message, prefix)) return absl::StrCat("prompt: ", message.substr(std::string(prefix).size()));
  }
  if (absl::StartsWith(message, "sampling: ")) return std::string(message.substr(10));
  return std::string(message);
}

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

}  // namespace

absl::StatusOr<CompletionRequest> ParseCompletionRequest(const std::string& body) {
  const Json j = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("the request body is not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("the request body must be a JSON object");
  CompletionRequest out;
  v1::GenerateRequest& r = out.request;
  auto get = [&](const char* name) -> const Json* {
    auto it = j.find(name);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  };
  // Typed readers: a field of another type is INVALID_ARGUMENT naming it.
  auto number = [&](const char* name, double* v) -> absl::Status {
    const Json* f = get(name);
    if (f == nullptr) return absl::OkStatus();
    if (!f->is_number()) return Bad(name, "must be a number");
    *v = f->get<double>();
    return absl::OkStatus();
  };
  auto integer = [&](const char* name, int64_t* v) -> absl::Status {
    const Json* f = get(name);
    if (f == nullptr) return absl::OkStatus();
    if (!f->is_number_integer()) return Bad(name, "must be an integer");
    *v = f->get<int64_t>();
    return absl::OkStatus();
  };
  auto boolean = [&](const char* name, bool* v) -> absl::Status {
    const Json* f = get(name);
    if (f == nullptr) return absl::OkStatus();
    if (!f->is_boolean()) return Bad(name, "must be true or false");
    *v = f->get<bool>();
    return absl::OkStatus();
  };
  auto string = [&](const char* name, std::string* v) -> absl::Status {
    const Json* f = get(name);
    if (f == nullptr) return absl::OkStatus();
    if (!f->is_string()) return Bad(name, "must be a string");
    *v = f->get<std::string>();
    return absl::OkStatus();
  };

  std::string model;
  if (absl::Status st = string("model", &model); !st.ok()) return st;
  r.set_model(model);

  // prompt: a string, a list of token ids, or a list of one of either.
  const Json* prompt = get("prompt");
  if (prompt == nullptr) return Bad("prompt", "is required");
  if (prompt->is_array() && prompt->size() == 1 && ((*prompt)[0].is_string() || (*prompt)[0].is_array())) {
    prompt = &(*prompt)[0];
  }
  if (prompt->is_string()) {
    r.set_text(prompt->get<std::string>());
  } else if (prompt->is_array() && !prompt->empty() && (*prompt)[0].is_number_integer()) {
    for (const Json& t : *prompt) {
      if (!t.is_number_integer() || t.get<int64_t>() < INT32_MIN || t.get<int64_t>() > INT32_MAX) {
        return Bad("prompt", "a list of token ids must hold integers only");
      }
      r.mutable_token_ids()->add_ids(static_cast<int>(t.get<int64_t>()));
    }
  } else if (prompt->is_array() && prompt->size() > 1) {
    return Bad("prompt", "several prompts in one request are not supported yet; send one per request");
  } else {
    return Bad("prompt", "must be a string or a list of token ids");
  }

  int64_t max_tokens = 16;  // OpenAI's default for completions
  if (absl::Status st = integer("max_tokens", &max_tokens); !st.ok()) return st;
  if (max_tokens < 1 || max_tokens > INT32_MAX) return Bad("max_tokens", "must be >= 1");
  r.set_max_tokens(static_cast<int>(max_tokens));

  v1::SamplingParams* s = r.mutable_sampling();
  double v = 0;
  struct {
    const char* name;
    void (v1::SamplingParams::*set)(float);
  } floats[] = {{"temperature", &v1::SamplingParams::set_temperature},
                {"top_p", &v1::SamplingParams::set_top_p},
                {"min_p", &v1::SamplingParams::set_min_p},
                {"repetition_penalty", &v1::SamplingParams::set_repetition_penalty},
                {"presence_penalty", &v1::SamplingParams::set_presence_penalty},
                {"frequency_penalty", &v1::SamplingParams::set_frequency_penalty}};
  for (const auto& f : floats) {
    if (get(f.name) == nullptr) continue;
    if (absl::Status st = number(f.name, &v); !st.ok()) return st;
    // Past float's range a value would become infinite: refuse it here (the
    // gateway checks the ranges that matter).
    if (!(std::abs(v) <= 1e30)) return Bad(f.name, "is out of range");
    (s->*f.set)(static_cast<float>(v));
  }
  int64_t top_k = 0;
  if (absl::Status st = integer("top_k", &top_k); !st.ok()) return st;
  if (get("top_k") != nullptr) {
    if (top_k < -1 || top_k > INT32_MAX) return Bad("top_k", "must be -1 (off), 0 (off) or a count of tokens");
    s->set_top_k(top_k == -1 ? 0 : static_cast<int>(top_k));  // vLLM: -1 is off
  }
  if (const Json* seed = get("seed")) {
    if (seed->is_number_unsigned()) {
      s->set_seed(seed->get<uint64_t>());
    } else if (seed->is_number_integer()) {
      return Bad("seed", "must be >= 0");
    } else {
      return Bad("seed", "must be an integer");
    }
  }

  int64_t n = 1;
  if (absl::Status st = integer("n", &n); !st.ok()) return st;
  if (n < 1 || n > kMaxChoices) return Bad("n", absl::StrCat("must be 1 to ", kMaxChoices));
  out.n = static_cast<int>(n);
  if (absl::Status st = boolean("echo", &out.echo); !st.ok()) return st;
  int64_t logprobs = 0;  // the gateway checks the range
  if (absl::Status st = integer("logprobs", &logprobs); !st.ok()) return st;
  if (logprobs < INT32_MIN || logprobs > INT32_MAX) return Bad("logprobs", "must be 0 to 20");
  r.set_logprobs(static_cast<int>(logprobs));
  if (out.echo && logprobs > 0) return Bad("echo", "with logprobs (the prompt's own) is not supported yet");

  if (const Json* stop = get("stop")) {
    if (stop->is_string()) {
      r.add_stop(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const Json& e : *stop) {
        if (!e.is_string()) return Bad("stop", "must be a string or a list of strings");
        r.add_stop(e.get<std::string>());
      }
    } else {
      return Bad("stop", "must be a string or a list of strings");
    }
  }
  bool b = false;
  if (absl::Status st = boolean("ignore_eos", &b); !st.ok()) return st;
  r.set_ignore_eos(b);
  if (get("skip_special_tokens") != nullptr) {
    if (absl::Status st = boolean("skip_special_tokens", &b); !st.ok()) return st;
    r.set_skip_special_tokens(b);
  }
  std::string session;
  if (absl::Status st = string("session_id", &session); !st.ok()) return st;
  r.set_session_id(session);
  bool continue_session = false;
  if (absl::Status st = boolean("continue_session", &continue_session); !st.ok()) return st;
  r.set_continue_session(continue_session);
  if (continue_session && out.n > 1) return Bad("n", "a session's turn has one answer: n must be 1");
  std::string user;
  if (absl::Status st = string("user", &user); !st.ok()) return st;  // accepted, not used

  if (absl::Status st = boolean("stream", &out.stream); !st.ok()) return st;
  if (const Json* so = get("stream_options")) {
    if (!so->is_object()) return Bad("stream_options", "must be an object");
    auto it = so->find("include_usage");
    if (it != so->end() && !it->is_null()) {
      if (!it->is_boolean()) return Bad("stream_options.include_usage", "must be true or false");
      out.include_usage = it->get<bool>();
    }
    if (!out.stream) return Bad("stream_options", "applies only with stream: true");
  }
  return out;
}

CompletionIds NewCompletionIds(const std::string& model) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  CompletionIds ids;
  ids.id = absl::StrFormat("cmpl-%016x%016x", rng(), rng());
  ids.created = std::chrono::duration_cast<std::chrono::seconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
  ids.model = model;
  return ids;
}

const char* FinishReasonName(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_STOP:
    case v1::FINISH_REASON_ABORT:
      return "stop";
    default:
      return nullptr;
  }
}

namespace {

Json Usage(const v1::Usage& usage) {
  return {{"prompt_tokens", usage.prompt_tokens()},
          {"completion_tokens", usage.completion_tokens()},
          {"total_tokens", usage.prompt_tokens() + usage.completion_tokens()}};
}

Json Choice(int index, const CompletionChoice& c) {
  const char* finish = FinishReasonName(c.reason);
  return {{"index", index},
          {"text", c.text},
          {"logprobs", c.logprobs.empty() ? Json() : Json::parse(c.logprobs)},
          {"finish_reason", finish ? Json(finish) : Json()}};
}

Json Object(const CompletionIds& ids) {
  return {{"id", ids.id}, {"object", "text_completion"}, {"created", ids.created}, {"model", ids.model}};
}

}  // namespace

void LogprobsJson::Add(const v1::GenerateResponse& response, size_t offset) {
  for (int i = 0; i < response.token_ids_size() && i < response.logprobs_size(); ++i) {
    const std::string text = token_text_(response.token_ids(i));
    offsets_.push_back(offset);
    offset += text.size();
    tokens_.push_back(text);
    logprobs_.push_back(response.logprobs(i).logprob());
    std::vector<std::pair<std::string, float>> top;
    for (const v1::TopLogprob& t : response.logprobs(i).top()) top.emplace_back(t.text(), t.logprob());
    top_.push_back(std::move(top));
  }
}

std::string LogprobsJson::Take() {
  Json top = Json::array();
  for (const auto& t : top_) {
    Json m = Json::object();
    for (const auto& [text, lp] : t) {
      if (!m.contains(text)) m[text] = lp;  // two ids with one text: the likelier
    }
    top.push_back(m);
  }
  const std::string out = Dump({{"tokens", tokens_},
                                {"token_logprobs", logprobs_},
                                {"top_logprobs", top},
                                {"text_offset", offsets_}});
  tokens_.clear();
  logprobs_.clear();
  top_.clear();
  offsets_.clear();
  return out;
}

std::string CompletionJson(const CompletionIds& ids, const std::vector<CompletionChoice>& choices,
                           const v1::Usage& usage) {
  Json j = Object(ids);
  j["choices"] = Json::array();
  for (size_t i = 0; i < choices.size(); ++i) j["choices"].push_back(Choice(static_cast<int>(i), choices[i]));
  j["usage"] = Usage(usage);
  return Dump(j);
}

std::string CompletionChunkEvent(const CompletionIds& ids, int index, const CompletionChoice& choice) {
  Json j = Object(ids);
  j["choices"] = Json::array({Choice(index, choice)});
  return absl::StrCat("data: ", Dump(j), "\n\n");
}

std::string UsageChunkEvent(const CompletionIds& ids, const v1::Usage& usage) {
  Json j = Object(ids);
  j["choices"] = Json::array();
  j["usage"] = Usage(usage);
  return absl::StrCat("data: ", Dump(j), "\n\n");
}

int HttpStatusFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kCancelled:
      return 499;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

std::string ErrorJson(const absl::Status& status) {
  const int http = HttpStatusFor(status);
  const char* type = http == 400   ? "invalid_request_error"
                     : http == 404 ? "not_found_error"
                     : http == 429 ? "rate_limit_error"
                     : http == 503 ? "service_unavailable_error"
                                   : "server_error";
  return Dump({{"error",
                {{"message", OpenAiMessage(status.message())},
                 {"type", type},
                 {"param", nullptr},
                 {"code", absl::StatusCodeToString(status.code())}}}});
}

}  // namespace moemesh
