#include "services/gateway/http_front_end.h"

#include <httplib.h>

#include <chrono>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "services/common/drain.h"
#include "services/gateway/gateway.h"
#include "services/gateway/openai_api.h"

namespace moemesh {

struct HttpFrontEnd::Server {
  httplib::Server http;
};

namespace {

using Json = nlohmann::json;
constexpr size_t kMaxBodyBytes = 16 << 20;

void SendError(httplib::Response& res, const absl::Status& st) {
  res.status = HttpStatusFor(st);
  res.set_content(ErrorJson(st), "application/json");
}

// A router call per request; the HTTP API sets no deadline of its own.
std::unique_ptr<grpc::ClientContext> NewRouterCall() { return std::make_unique<grpc::ClientContext>(); }

absl::StatusOr<Json> JsonBody(const httplib::Request& req) {
  Json j = Json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError("the request body must be a JSON object");
  return j;
}

// An optional field of a body: `fallback` when absent or null,
// INVALID_ARGUMENT naming it when of another type (nlohmann's value()
// would throw).
absl::StatusOr<std::string> StringField(const Json& j, const char* name, const std::string& fallback) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_string()) return absl::InvalidArgumentError(absl::StrCat(name, ": must be a string"));
  return it->get<std::string>();
}
absl::StatusOr<bool> BoolField(const Json& j, const char* name, bool fallback) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) return absl::InvalidArgumentError(absl::StrCat(name, ": must be true or false"));
  return it->get<bool>();
}

// A token id's text, by the gateway's tokenizer.
std::function<std::string(int)> TokenText(Gateway* gateway) {
  return [gateway](int id) {
    v1::DetokenizeRequest d;
    d.add_ids(id);
    d.set_skip_special_tokens(false);
    v1::DetokenizeResponse out;
    return gateway->Detokenize(d, &out).ok() ? out.text() : std::string();
  };
}

// Runs the request's n choices side by side (choice i with seed + i when a
// seed is given, so that they differ and repeat), handing each response to
// `on_response(i, response)`, which may run on any of their threads.
// Returns the first error, and each choice's usage.
absl::Status RunChoices(Gateway* gateway, const CompletionRequest& c,
                        const std::function<bool(int, const v1::GenerateResponse&)>& on_response,
                        std::vector<v1::Usage>* usage) {
  std::vector<absl::Status> status(c.n);
  usage->assign(c.n, v1::Usage());
  auto run = [&](int i) {
    v1::GenerateRequest r = c.request;
    if (r.sampling().has_seed()) r.mutable_sampling()->set_seed(r.sampling().seed() + i);
    status[i] = gateway->Generate(r, NewRouterCall, [&, i](const v1::GenerateResponse& resp) {
      if (resp.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) (*usage)[i] = resp.usage();
      return on_response(i, resp);
    });
  };
  std::vector<std::thread> others;
  try {
    for (int i = 1; i < c.n; ++i) others.emplace_back(run, i);
  } catch (const std::system_error&) {
    for (std::thread& t : others) t.join();
    return absl::ResourceExhaustedError("no thread for another choice; retry later, or with a smaller n");
  }
  run(0);
  for (std::thread& t : others) t.join();
  for (const absl::Status& st : status) {
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

// The choices' usage together: the prompt once, every choice's tokens.
v1::Usage Total(const std::vector<v1::Usage>& usage) {
  v1::Usage total;
  if (!usage.empty()) total.set_prompt_tokens(usage[0].prompt_tokens());
  for (const v1::Usage& u : usage) total.set_completion_tokens(total.completion_tokens() + u.completion_tokens());
  return total;
}

// The text of a request's prompt, for echo: as sent, or its ids decoded.
std::string PromptText(Gateway* gateway, const v1::GenerateRequest& r) {
  if (r.has_text()) return r.text();
  v1::DetokenizeRequest d;
  *d.mutable_ids() = r.token_ids().ids();
  d.set_skip_special_tokens(r.has_skip_special_tokens() ? r.skip_special_tokens() : true);
  v1::DetokenizeResponse out;
  return gateway->Detokenize(d, &out).ok() ? out.text() : std::string();
}

void Completions(Gateway* gateway, const std::string& model, const httplib::Request& req, httplib::Response& res) {
  if (absl::Status st = RefuseWhileDraining("this gateway"); !st.ok()) return SendError(res, st);
  absl::StatusOr<CompletionRequest> parsed = ParseCompletionRequest(req.body);
  if (!parsed.ok()) return SendError(res, parsed.status());
  // Checked before any byte goes out: a stream's status line says 200.
  if (absl::Status st = gateway->Check(parsed->request); !st.ok()) return SendError(res, st);
  const std::string echoed = parsed->echo ? PromptText(gateway, parsed->request) : std::string();
  const CompletionIds ids = NewCompletionIds(parsed->request.model().empty() ? model : parsed->request.model());
  if (!parsed->stream) {
    std::vector<CompletionChoice> choices(parsed->n, CompletionChoice{echoed, v1::FINISH_REASON_UNSPECIFIED, ""});
    std::vector<LogprobsJson> logprobs(parsed->n, LogprobsJson(TokenText(gateway)));
    std::vector<v1::Usage> usage;
    absl::Status st = RunChoices(
        gateway, *parsed,
        [&](int i, const v1::GenerateResponse& r) {
          logprobs[i].Add(r, choices[i].text.size());
          choices[i].text += r.text_delta();
          if (r.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) choices[i].reason = r.finish_reason();
          return true;
        },
        &usage);
    if (!st.ok()) return SendError(res, st);
    for (int i = 0; i < parsed->n; ++i) {
      if (!logprobs[i].empty()) choices[i].logprobs = logprobs[i].Take();
    }
    res.set_content(CompletionJson(ids, choices, Total(usage)), "application/json");
    return;
  }
  auto request = std::make_shared<CompletionRequest>(*std::move(parsed));
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider("text/event-stream", [gateway, request, ids, echoed](size_t,
                                                                                       httplib::DataSink& sink) {
    std::mutex mu;  // the choices' threads share the sink
    bool gone = false;
    auto write = [&](const std::string& s) {
      std::lock_guard<std::mutex> lock(mu);
      gone = gone || !sink.is_writable() || !sink.write(s.data(), s.size());
      return !gone;
    };
    std::vector<LogprobsJson> logprobs(request->n, LogprobsJson(TokenText(gateway)));
    std::vector<size_t> sent(request->n, 0);  // each choice's text bytes so far, for the offsets
    if (!echoed.empty()) {  // each choice begins with the prompt
      for (int i = 0; i < request->n; ++i) {
        write(CompletionChunkEvent(ids, i, {echoed, v1::FINISH_REASON_UNSPECIFIED, ""}));
      }
    }
    std::vector<v1::Usage> usage;
    absl::Status st = RunChoices(
        gateway, *request,
        [&](int i, const v1::GenerateResponse& r) {
          logprobs[i].Add(r, sent[i]);
          sent[i] += r.text_delta().size();
          if (r.text_delta().empty() && r.finish_reason() == v1::FINISH_REASON_UNSPECIFIED && logprobs[i].empty()) {
            return true;
          }
          CompletionChoice c{r.text_delta(), r.finish_reason(), logprobs[i].empty() ? "" : logprobs[i].Take()};
          return write(CompletionChunkEvent(ids, i, c));  // false: the client left; the router call is cancelled
        },
        &usage);
    if (st.ok() && request->include_usage) write(UsageChunkEvent(ids, Total(usage)));
    if (!st.ok() && !absl::IsCancelled(st)) write("data: " + ErrorJson(st) + "\n\n");
    write(kDoneEvent);
    sink.done();
    return true;
  });
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpFrontEnd>> HttpFrontEnd::Start(const Options& options, Gateway* gateway,
                                                                  std::shared_ptr<prometheus::Registry> registry) {
  std::unique_ptr<HttpFrontEnd> fe(new HttpFrontEnd);
  fe->server_ = std::make_unique<Server>();
  httplib::Server& http = fe->server_->http;
  const int threads = options.threads;
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  // A request body is JSON with a prompt: bounded, as gRPC messages are.
  http.set_payload_max_length(kMaxBodyBytes);
  http.set_read_timeout(std::chrono::seconds(30));
  v1::ListModelsResponse models;
  (void)gateway->ListModels(v1::ListModelsRequest(), &models);
  const v1::ModelInfo info = models.models_size() > 0 ? models.models(0) : v1::ModelInfo();
  const int64_t started =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();

  http.Post("/v1/completions", [gateway, name = info.name()](const httplib::Request& req, httplib::Response& res) {
    Completions(gateway, name, req, res);
  });
  http.Get("/v1/models", [info, started](const httplib::Request&, httplib::Response& res) {
    Json model = {{"id", info.name()},       {"object", "model"},   {"created", started},
                  {"owned_by", "moemesh"},   {"root", info.name()}, {"max_model_len", info.context_length()}};
    res.set_content(Json({{"object", "list"}, {"data", Json::array({model})}}).dump(-1, ' ', false,
                                                                                  Json::error_handler_t::replace),
                    "application/json");
  });
  http.Post("/tokenize", [gateway, info](const httplib::Request& req, httplib::Response& res) {
    absl::StatusOr<Json> j = JsonBody(req);
    if (!j.ok()) return SendError(res, j.status());
    if (!j->contains("prompt") || !(*j)["prompt"].is_string()) {
      return SendError(res, absl::InvalidArgumentError("prompt: a string is required"));
    }
    absl::StatusOr<std::string> model = StringField(*j, "model", "");
    if (!model.ok()) return SendError(res, model.status());
    absl::StatusOr<bool> special = BoolField(*j, "add_special_tokens", true);
    if (!special.ok()) return SendError(res, special.status());
    v1::TokenizeRequest t;
    t.set_model(*model);
    t.set_text((*j)["prompt"].get<std::string>());
    t.set_add_special_tokens(*special);
    v1::TokenizeResponse out;
    if (absl::Status st = gateway->Tokenize(t, &out); !st.ok()) return SendError(res, st);
    const std::vector<int> ids(out.ids().begin(), out.ids().end());
    res.set_content(Json({{"count", ids.size()}, {"max_model_len", info.context_length()}, {"tokens", ids}}).dump(),
                    "application/json");
  });
  http.Post("/detokenize", [gateway](const httplib::Request& req, httplib::Response& res) {
    absl::StatusOr<Json> j = JsonBody(req);
    if (!j.ok()) return SendError(res, j.status());
    const auto it = j->find("tokens");
    if (it == j->end() || !it->is_array()) {
      return SendError(res, absl::InvalidArgumentError("tokens: a list of token ids is required"));
    }
    absl::StatusOr<std::string> model = StringField(*j, "model", "");
    if (!model.ok()) return SendError(res, model.status());
    v1::DetokenizeRequest d;
    d.set_model(*model);
    for (const Json& t : *it) {
      if (!t.is_number_integer() || t.get<int64_t>() < INT32_MIN || t.get<int64_t>() > INT32_MAX) {
        return SendError(res, absl::InvalidArgumentError("tokens: token ids (integers) only"));
      }
      d.add_ids(static_cast<int>(t.get<int64_t>()));
    }
    v1::DetokenizeResponse out;
    if (absl::Status st = gateway->Detokenize(d, &out); !st.ok()) return SendError(res, st);
    res.set_content(Json({{"prompt", out.text()}}).dump(-1, ' ', false, Json::error_handler_t::replace),
                    "application/json");
  });
  http.Get("/health", [](const httplib::Request&, httplib::Response& res) { res.status = 200; });
  if (registry) {
    http.Get("/metrics", [registry](const httplib::Request&, httplib::Response& res) {
      res.set_content(prometheus::TextSerializer().Serialize(registry->Collect()), "text/plain; version=0.0.4");
    });
  }

  fe->port_ = options.port == 0 ? http.bind_to_any_port(options.host)
                                : (http.bind_to_port(options.host, options.port) ? options.port : -1);
  if (fe->port_ <= 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for HTTP on ", options.host, ":", options.port, " (in use, or not an address here)"));
  }
  fe->thread_ = std::thread([s = fe->server_.get()] { s->http.listen_after_bind(); });
  return fe;
}

HttpFrontEnd::~HttpFrontEnd() {
  if (server_) server_->http.stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace moemesh
