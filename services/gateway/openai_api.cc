#include "services/gateway/openai_api.h"

#include <chrono>
#include <cmath>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/common/status_macros.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

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

namespace {

// Typed readers of a body's optional fields: a field of another type is
// INVALID_ARGUMENT naming it; absent or null leaves the value as it was.
class Fields {
 public:
  explicit Fields(const Json& j) : j_(j) {}
  const Json* get(const char* name) const {
    auto it = j_.find(name);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  absl::Status number(const char* name, double* v) const {
    const Json* f = get(name);
    if (f == nullptr) return absl::OkStatus();
    if (!f->is_number()) return Bad(name, "must be a number");
    *v = f->get<double>();
    return absl::OkStatus();
  }
  absl::Status integer(const char* name, int64_t* v) const {
    const Json* f = get(name);
    if (f == nullptr) return absl::OkStatus();
    if (!f->is_number_integer()) return Bad(name, "must be an integer");
    *v = f->get<int64_t>();
    return absl::OkStatus();
  }
  absl::Status boolean(const char* name, bool* v) const {
    const Json* f = get(name);
    if (f == nullptr) return absl::OkStatus();
    if (!f->is_boolean()) return Bad(name, "must be true or false");
    *v = f->get<bool>();
    return absl::OkStatus();
  }
  absl::Status string(const char* name, std::string* v) const {
    const Json* f = get(name);
    if (f == nullptr) return absl::OkStatus();
    if (!f->is_string()) return Bad(name, "must be a string");
    *v = f->get<std::string>();
    return absl::OkStatus();
  }

 private:
  const Json& j_;
};

absl::StatusOr<Json> ParseBody(const std::string& body) {
  Json j = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("the request body is not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("the request body must be a JSON object");
  return j;
}

// What completions and chat completions share: the model, sampling, n,
// stop, and streaming.
absl::Status ParseCommon(const Fields& f, CompletionRequest* out) {
  v1::GenerateRequest& r = out->request;
  std::string model;
  MM_RETURN_IF_ERROR(f.string("model", &model));
  r.set_model(model);
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
  for (const auto& fl : floats) {
    if (f.get(fl.name) == nullptr) continue;
    MM_RETURN_IF_ERROR(f.number(fl.name, &v));
    // Past float's range a value would become infinite: refuse it here (the
    // gateway checks the ranges that matter).
    if (!(std::abs(v) <= 1e30)) return Bad(fl.name, "is out of range");
    (s->*fl.set)(static_cast<float>(v));
  }
  int64_t top_k = 0;
  MM_RETURN_IF_ERROR(f.integer("top_k", &top_k));
  if (f.get("top_k") != nullptr) {
    if (top_k < -1 || top_k > INT32_MAX) return Bad("top_k", "must be -1 (off), 0 (off) or a count of tokens");
    s->set_top_k(top_k == -1 ? 0 : static_cast<int>(top_k));  // vLLM: -1 is off
  }
  if (const Json* seed = f.get("seed")) {
    if (seed->is_number_unsigned()) {
      s->set_seed(seed->get<uint64_t>());
    } else if (seed->is_number_integer()) {
      return Bad("seed", "must be >= 0");
    } else {
      return Bad("seed", "must be an integer");
    }
  }
  int64_t n = 1;
  MM_RETURN_IF_ERROR(f.integer("n", &n));
  if (n < 1 || n > kMaxChoices) return Bad("n", absl::StrCat("must be 1 to ", kMaxChoices));
  out->n = static_cast<int>(n);
  if (const Json* stop = f.get("stop")) {
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
  MM_RETURN_IF_ERROR(f.boolean("ignore_eos", &b));
  r.set_ignore_eos(b);
  if (f.get("skip_special_tokens") != nullptr) {
    MM_RETURN_IF_ERROR(f.boolean("skip_special_tokens", &b));
    r.set_skip_special_tokens(b);
  }
  std::string user;
  MM_RETURN_IF_ERROR(f.string("user", &user));  // accepted, not used
  MM_RETURN_IF_ERROR(f.boolean("stream", &out->stream));
  if (const Json* so = f.get("stream_options")) {
    if (!so->is_object()) return Bad("stream_options", "must be an object");
    auto it = so->find("include_usage");
    if (it != so->end() && !it->is_null()) {
      if (!it->is_boolean()) return Bad("stream_options.include_usage", "must be true or false");
      out->include_usage = it->get<bool>();
    }
    if (!out->stream) return Bad("stream_options", "applies only with stream: true");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CompletionRequest> ParseCompletionRequest(const std::string& body) {
  MM_ASSIGN_OR_RETURN(const Json j, ParseBody(body));
  const Fields f(j);
  CompletionRequest out;
  MM_RETURN_IF_ERROR(ParseCommon(f, &out));
  v1::GenerateRequest& r = out.request;

  // prompt: a string, a list of token ids, or a list of one of either.
  const Json* prompt = f.get("prompt");
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
  MM_RETURN_IF_ERROR(f.integer("max_tokens", &max_tokens));
  if (max_tokens < 1 || max_tokens > INT32_MAX) return Bad("max_tokens", "must be >= 1");
  r.set_max_tokens(static_cast<int>(max_tokens));

  MM_RETURN_IF_ERROR(f.boolean("echo", &out.echo));
  int64_t logprobs = 0;  // the gateway checks the range
  MM_RETURN_IF_ERROR(f.integer("logprobs", &logprobs));
  if (logprobs < INT32_MIN || logprobs > INT32_MAX) return Bad("logprobs", "must be 0 to 20");
  r.set_logprobs(static_cast<int>(logprobs));
  if (out.echo && logprobs > 0) return Bad("echo", "with logprobs (the prompt's own) is not supported yet");

  std::string session;
  MM_RETURN_IF_ERROR(f.string("session_id", &session));
  r.set_session_id(session);
  bool continue_session = false;
  MM_RETURN_IF_ERROR(f.boolean("continue_session", &continue_session));
  r.set_continue_session(continue_session);
  if (continue_session && out.n > 1) return Bad("n", "a session's turn has one answer: n must be 1");
  return out;
}

absl::StatusOr<nlohmann::ordered_json> ChatTemplateContext(const OrderedJson& body) {
  auto messages = body.find("messages");
  if (messages == body.end() || !messages->is_array() || messages->empty()) {
    return Bad("messages", "a non-empty list of messages is required");
  }
  OrderedJson msgs = OrderedJson::array();
  for (size_t i = 0; i < messages->size(); ++i) {
    const OrderedJson& m = (*messages)[i];
    const std::string where = absl::StrCat("messages[", i, "]");
    if (!m.is_object()) return Bad(where, "must be an object");
    auto role = m.find("role");
    if (role == m.end() || !role->is_string()) return Bad(where + ".role", "a string is required");
    OrderedJson out = m;
    if (auto content = m.find("content"); content != m.end() && content->is_array()) {
      // Text parts joined with newlines, as vLLM's "string" content format.
      std::string text;
      for (size_t k = 0; k < content->size(); ++k) {
        const OrderedJson& part = (*content)[k];
        // (nlohmann's value() throws on a field of another type: test first.)
        const bool text_part = part.is_object() && part.contains("type") && part["type"] == "text";
        if (!text_part || !part.contains("text") ||
            !part["text"].is_string()) {
          return Bad(absl::StrCat(where, ".content[", k, "]"), "only {\"type\": \"text\", \"text\": ...} parts are "
                                                               "supported");
        }
        if (k) text += "\n";
        text += part["text"].get<std::string>();
      }
      out["content"] = text;
    } else if (content != m.end() && !content->is_string() && !content->is_null()) {
      return Bad(where + ".content", "must be a string, a list of text parts, or null");
    }
    if (auto calls = out.find("tool_calls"); calls != out.end() && calls->is_array()) {
      for (OrderedJson& call : *calls) {
        if (!call.is_object() || !call.contains("function") || !call["function"].is_object()) continue;
        OrderedJson& fn = call["function"];
        if (fn.contains("arguments") && fn["arguments"].is_string()) {
          OrderedJson args = OrderedJson::parse(fn["arguments"].get<std::string>(), nullptr, false);
          if (!args.is_discarded() && args.is_object()) fn["arguments"] = std::move(args);
        }
      }
    }
    msgs.push_back(std::move(out));
  }
  OrderedJson context = OrderedJson::object();
  context["messages"] = std::move(msgs);
  auto tools = body.find("tools");
  if (tools != body.end() && !tools->is_null() && !tools->is_array()) return Bad("tools", "must be a list");
  context["tools"] = tools != body.end() && !tools->empty() ? *tools : OrderedJson();
  context["documents"] = nullptr;
  bool add_generation_prompt = true, continue_final = false;
  for (auto [name, v] : {std::pair{"add_generation_prompt", &add_generation_prompt},
                         std::pair{"continue_final_message", &continue_final}}) {
    auto it = body.find(name);
    if (it == body.end() || it->is_null()) continue;
    if (!it->is_boolean()) return Bad(name, "must be true or false");
    *v = it->get<bool>();
  }
  if (continue_final && add_generation_prompt && body.contains("add_generation_prompt")) {
    return Bad("continue_final_message", "and add_generation_prompt cannot both be true");
  }
  context["add_generation_prompt"] = continue_final ? false : add_generation_prompt;
  if (auto kwargs = body.find("chat_template_kwargs"); kwargs != body.end() && !kwargs->is_null()) {
    if (!kwargs->is_object()) return Bad("chat_template_kwargs", "must be an object");
    for (const auto& [k, v] : kwargs->items()) context[k] = v;
  }
  return context;
}

absl::StatusOr<std::string> CutAfterFinalMessage(const std::string& rendered, const OrderedJson& messages) {
  const OrderedJson& last = messages.back();
  const std::string content = last.contains("content") && last["content"].is_string()
                                  ? last["content"].get<std::string>() : std::string();
  // As transformers: the final message's content, stripped, found from the end.
  const size_t b = content.find_first_not_of(" \t\n\r");
  const std::string stripped = b == std::string::npos ? "" : content.substr(b, content.find_last_not_of(" \t\n\r") - b + 1);
  const size_t at = rendered.rfind(stripped);
  if (stripped.empty() || at == std::string::npos) {
    return Bad("continue_final_message", "the chat template does not show the final message's content");
  }
  return rendered.substr(0, at + stripped.size());
}

absl::StatusOr<CompletionRequest> ParseChatRequest(const std::string& body) {
  MM_ASSIGN_OR_RETURN(const Json j, ParseBody(body));
  const Fields f(j);
  CompletionRequest out;
  out.chat = true;
  MM_RETURN_IF_ERROR(ParseCommon(f, &out));
  v1::GenerateRequest& r = out.request;
  int64_t max_tokens = 0;  // the rest of the context
  MM_RETURN_IF_ERROR(f.integer("max_tokens", &max_tokens));
  MM_RETURN_IF_ERROR(f.integer("max_completion_tokens", &max_tokens));
  if (max_tokens < 0 || max_tokens > INT32_MAX || (max_tokens == 0 && (f.get("max_tokens") || f.get("max_completion_tokens")))) {
    return Bad(f.get("max_completion_tokens") ? "max_completion_tokens" : "max_tokens", "must be >= 1");
  }
  r.set_max_tokens(static_cast<int>(max_tokens));
  bool logprobs = false;
  MM_RETURN_IF_ERROR(f.boolean("logprobs", &logprobs));
  int64_t top = 0;
  MM_RETURN_IF_ERROR(f.integer("top_logprobs", &top));
  if (top < 0 || top > 20) return Bad("top_logprobs", "must be 0 to 20");
  if (top > 0 && !logprobs) return Bad("top_logprobs", "needs logprobs: true");
  out.top_logprobs = static_cast<int>(top);
  r.set_logprobs(logprobs ? std::max<int>(1, out.top_logprobs) : 0);
  if (const Json* choice = f.get("tool_choice")) {
    if (!choice->is_string() || (choice->get<std::string>() != "none" && choice->get<std::string>() != "auto")) {
      return Bad("tool_choice", "only \"none\" and \"auto\" are supported: moemesh does not parse tool calls yet");
    }
  }
  for (const char* unsupported : {"session_id", "continue_session", "echo"}) {
    if (f.get(unsupported) != nullptr) return Bad(unsupported, "is for /v1/completions, not chat");
  }
  const OrderedJson ordered = OrderedJson::parse(body, nullptr, /*allow_exceptions=*/false);
  MM_ASSIGN_OR_RETURN(out.template_context, ChatTemplateContext(ordered));
  auto cont = ordered.find("continue_final_message");
  out.continue_final_message = cont != ordered.end() && cont->is_boolean() && cont->get<bool>();
  return out;
}

CompletionIds NewCompletionIds(const std::string& model, bool chat) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  CompletionIds ids;
  ids.id = absl::StrFormat("%s-%016x%016x", chat ? "chatcmpl" : "cmpl", rng(), rng());
  ids.chat = chat;
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

// A choice of a whole answer, or (`chunk`) of a stream.
Json Choice(const CompletionIds& ids, int index, const CompletionChoice& c, bool chunk) {
  const char* finish = FinishReasonName(c.reason);
  Json j = {{"index", index}};
  if (!ids.chat) {
    j["text"] = c.text;
  } else if (!chunk) {
    j["message"] = {{"role", "assistant"}, {"content", c.text}};
  } else {
    Json delta = Json::object();
    if (c.role) delta["role"] = "assistant";
    if (c.role || !c.text.empty()) delta["content"] = c.text;
    j["delta"] = std::move(delta);
  }
  j["logprobs"] = c.logprobs.empty() ? Json() : Json::parse(c.logprobs);
  j["finish_reason"] = finish ? Json(finish) : Json();
  return j;
}

Json Object(const CompletionIds& ids, bool chunk) {
  const char* object = !ids.chat ? "text_completion" : chunk ? "chat.completion.chunk" : "chat.completion";
  return {{"id", ids.id}, {"object", object}, {"created", ids.created}, {"model", ids.model}};
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
  if (chat_) return TakeChat();
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

// Chat's form: each token with its UTF-8 bytes and its top alternatives.
std::string LogprobsJson::TakeChat() {
  auto bytes = [](const std::string& t) {
    Json b = Json::array();
    for (unsigned char c : t) b.push_back(static_cast<int>(c));
    return b;
  };
  Json content = Json::array();
  for (size_t i = 0; i < tokens_.size(); ++i) {
    Json top = Json::array();
    for (size_t k = 0; k < top_[i].size() && static_cast<int>(k) < top_n_; ++k) {
      top.push_back({{"token", top_[i][k].first}, {"logprob", top_[i][k].second}, {"bytes", bytes(top_[i][k].first)}});
    }
    content.push_back({{"token", tokens_[i]}, {"logprob", logprobs_[i]}, {"bytes", bytes(tokens_[i])},
                       {"top_logprobs", std::move(top)}});
  }
  tokens_.clear();
  logprobs_.clear();
  top_.clear();
  offsets_.clear();
  return Dump({{"content", std::move(content)}});
}

std::string CompletionJson(const CompletionIds& ids, const std::vector<CompletionChoice>& choices,
                           const v1::Usage& usage) {
  Json j = Object(ids, false);
  j["choices"] = Json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    j["choices"].push_back(Choice(ids, static_cast<int>(i), choices[i], false));
  }
  j["usage"] = Usage(usage);
  return Dump(j);
}

std::string CompletionChunkEvent(const CompletionIds& ids, int index, const CompletionChoice& choice) {
  Json j = Object(ids, true);
  j["choices"] = Json::array({Choice(ids, index, choice, true)});
  return absl::StrCat("data: ", Dump(j), "\n\n");
}

std::string UsageChunkEvent(const CompletionIds& ids, const v1::Usage& usage) {
  Json j = Object(ids, true);
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
                     : http == 401 ? "authentication_error"
                     : http == 403 ? "permission_error"
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
