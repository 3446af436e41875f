#include "services/gateway/http_front_end.h"

#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "core/jinja/chat_template.h"
#include "nlohmann/json.hpp"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "core/common/status_macros.h"
#include "services/common/drain.h"
#include "services/gateway/gateway.h"
#include "services/common/http_tls.h"
#include "services/gateway/openai_api.h"

namespace moemesh {

struct HttpFrontEnd::Server {
  std::shared_ptr<HttpTls> tls;  // the SSL server's callbacks use it
  std::unique_ptr<httplib::Server> server;
  std::atomic<bool> listened{false};  // the listening loop is over
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
absl::Status RunChoices(Gateway* gateway, const CompletionRequest& c, ApiKeys::Lease* lease,
                        const std::function<bool(int, const v1::GenerateResponse&)>& on_response,
                        std::vector<v1::Usage>* usage) {
  std::vector<absl::Status> status(c.n);
  usage->assign(c.n, v1::Usage());
  auto run = [&](int i) {
    v1::GenerateRequest r = c.request;
    if (r.sampling().has_seed()) r.mutable_sampling()->set_seed(r.sampling().seed() + i);
    status[i] = gateway->Generate(
        r, NewRouterCall,
        [&, i](const v1::GenerateResponse& resp) {
          if (resp.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) (*usage)[i] = resp.usage();
          return on_response(i, resp);
        },
        lease);
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

// A chat prompt's token ids: the template rendered over the request's
// messages, tokenized without adding special tokens (the template has
// them), as transformers' apply_chat_template(tokenize=True) does.
absl::StatusOr<std::vector<int>> ChatPromptIds(Gateway* gateway, const jinja::ChatTemplate* chat_template,
                                               const std::string& model, const nlohmann::ordered_json& context,
                                               bool continue_final_message) {
  if (chat_template == nullptr) {
    return absl::FailedPreconditionError(
        "this model has no chat template (chat_template.jinja or tokenizer_config.json's chat_template); start the "
        "gateway with --chat-template FILE, or use /v1/completions");
  }
  absl::StatusOr<std::string> text = chat_template->Render(context);
  if (!text.ok()) return absl::InvalidArgumentError(absl::StrCat("chat template: ", text.status().message()));
  if (continue_final_message) {
    absl::StatusOr<std::string> cut = CutAfterFinalMessage(*text, context["messages"]);
    if (!cut.ok()) return cut.status();
    text = *std::move(cut);
  }
  v1::TokenizeRequest t;
  t.set_model(model);
  t.set_text(*text);
  t.set_add_special_tokens(false);
  v1::TokenizeResponse out;
  MM_RETURN_IF_ERROR(gateway->Tokenize(t, &out));
  return std::vector<int>(out.ids().begin(), out.ids().end());
}

// A completion's or chat completion's choices, whole or streamed.
// `lease` (may be null) holds the call's API-key stream until it ends.
void Serve(Gateway* gateway, std::shared_ptr<CompletionRequest> request, std::shared_ptr<ApiKeys::Lease> lease,
           const CompletionIds& ids, const std::string& echoed, httplib::Response& res) {
  const bool chat = request->chat;
  if (!request->stream) {
    std::vector<CompletionChoice> choices(request->n, CompletionChoice{echoed, v1::FINISH_REASON_UNSPECIFIED, ""});
    std::vector<LogprobsJson> logprobs(request->n, LogprobsJson(TokenText(gateway), chat, request->top_logprobs));
    std::vector<v1::Usage> usage;
    absl::Status st = RunChoices(
        gateway, *request, lease.get(),
        [&](int i, const v1::GenerateResponse& r) {
          logprobs[i].Add(r, choices[i].text.size());
          choices[i].text += r.text_delta();
          if (r.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) choices[i].reason = r.finish_reason();
          return true;
        },
        &usage);
    if (!st.ok()) return SendError(res, st);
    for (int i = 0; i < request->n; ++i) {
      if (!logprobs[i].empty()) choices[i].logprobs = logprobs[i].Take();
    }
    res.set_content(CompletionJson(ids, choices, Total(usage)), "application/json");
    return;
  }
  res.set_header("Cache-Control", "no-cache");
  // A stream ends its connection: node-fetch (the OpenAI SDK's HTTP client
  // on Node 18) takes a chunked answer on a connection kept for the next
  // request as cut short ("Premature close"). A stream lasts far longer than
  // a new connection takes.
  res.set_header("Connection", "close");
  res.set_chunked_content_provider("text/event-stream", [gateway, request, lease, ids, echoed, chat](
                                                          size_t, httplib::DataSink& sink) {
    std::mutex mu;  // the choices' threads share the sink
    bool gone = false;
    auto write = [&](const std::string& s) {
      std::lock_guard<std::mutex> lock(mu);
      gone = gone || !sink.is_writable() || !sink.write(s.data(), s.size());
      return !gone;
    };
    std::vector<LogprobsJson> logprobs(request->n, LogprobsJson(TokenText(gateway), chat, request->top_logprobs));
    std::vector<size_t> sent(request->n, 0);  // each choice's text bytes so far, for the offsets
    if (!echoed.empty() || chat) {  // each choice begins with the prompt, or (chat) says its role
      for (int i = 0; i < request->n; ++i) {
        CompletionChoice first{echoed, v1::FINISH_REASON_UNSPECIFIED, ""};
        first.role = chat;
        write(CompletionChunkEvent(ids, i, first));
      }
    }
    std::vector<v1::Usage> usage;
    absl::Status st = RunChoices(
        gateway, *request, lease.get(),
        [&](int i, const v1::GenerateResponse& r) {
          logprobs[i].Add(r, sent[i]);
          sent[i] += r.text_delta().size();
          const bool last = r.finish_reason() != v1::FINISH_REASON_UNSPECIFIED;
          if (r.text_delta().empty() && !last && logprobs[i].empty()) return true;
          CompletionChoice c{r.text_delta(), r.finish_reason(), logprobs[i].empty() ? "" : logprobs[i].Take()};
          if (chat && last && !c.text.empty()) {
            // Chat ends with a chunk of its own: an empty delta and the reason.
            CompletionChoice text = c;
            text.reason = v1::FINISH_REASON_UNSPECIFIED;
            if (!write(CompletionChunkEvent(ids, i, text))) return false;
            c = CompletionChoice{"", r.finish_reason(), ""};
          }
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

void Completions(Gateway* gateway, const std::string& model, const httplib::Request& req, httplib::Response& res) {
  if (absl::Status st = RefuseWhileDraining("this gateway"); !st.ok()) return SendError(res, st);
  absl::StatusOr<CompletionRequest> parsed = ParseCompletionRequest(req.body);
  if (!parsed.ok()) return SendError(res, parsed.status());
  auto lease = gateway->Authorize(req.get_header_value("Authorization"), parsed->request.model());
  if (!lease.ok()) return SendError(res, lease.status());
  // Checked before any byte goes out: a stream's status line says 200.
  if (absl::Status st = gateway->Check(parsed->request); !st.ok()) return SendError(res, st);
  const std::string echoed = parsed->echo ? PromptText(gateway, parsed->request) : std::string();
  const CompletionIds ids = NewCompletionIds(parsed->request.model().empty() ? model : parsed->request.model());
  Serve(gateway, std::make_shared<CompletionRequest>(*std::move(parsed)), std::move(*lease), ids, echoed, res);
}

void ChatCompletions(Gateway* gateway, const jinja::ChatTemplate* chat_template, const v1::ModelInfo& info,
                     const httplib::Request& req, httplib::Response& res) {
  if (absl::Status st = RefuseWhileDraining("this gateway"); !st.ok()) return SendError(res, st);
  absl::StatusOr<CompletionRequest> parsed = ParseChatRequest(req.body);
  if (!parsed.ok()) return SendError(res, parsed.status());
  auto lease = gateway->Authorize(req.get_header_value("Authorization"), parsed->request.model());
  if (!lease.ok()) return SendError(res, lease.status());
  v1::GenerateRequest& r = parsed->request;
  absl::StatusOr<std::vector<int>> ids =
      ChatPromptIds(gateway, chat_template, r.model(), parsed->template_context, parsed->continue_final_message);
  if (!ids.ok()) return SendError(res, ids.status());
  *r.mutable_token_ids()->mutable_ids() = {ids->begin(), ids->end()};
  if (r.max_tokens() == 0) {  // the rest of the context
    const int64_t left = static_cast<int64_t>(info.context_length()) - static_cast<int64_t>(ids->size());
    if (left < 1) {
      return SendError(res, absl::InvalidArgumentError(absl::StrCat("messages: the prompt's ", ids->size(),
                                                                    " tokens fill the model's context of ",
                                                                    info.context_length())));
    }
    r.set_max_tokens(static_cast<int>(left));
  }
  if (absl::Status st = gateway->Check(r); !st.ok()) return SendError(res, st);
  const CompletionIds completion_ids = NewCompletionIds(r.model().empty() ? info.name() : r.model(), /*chat=*/true);
  Serve(gateway, std::make_shared<CompletionRequest>(*std::move(parsed)), std::move(*lease), completion_ids, "",
        res);
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpFrontEnd>> HttpFrontEnd::Start(const Options& options, Gateway* gateway,
                                                                  std::shared_ptr<prometheus::Registry> registry) {
  std::unique_ptr<HttpFrontEnd> fe(new HttpFrontEnd);
  fe->server_ = std::make_unique<Server>();
  fe->server_->tls = options.tls;
  if (HttpTls* tls = options.tls.get()) {
    fe->server_->server =
        std::make_unique<httplib::SSLServer>([tls](SSL_CTX& ctx) { return tls->SetUp(&ctx); });
  } else {
    fe->server_->server = std::make_unique<httplib::Server>();
  }
  httplib::Server& http = *fe->server_->server;
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
  http.Post("/v1/chat/completions", [gateway, info, t = options.chat_template](const httplib::Request& req,
                                                                               httplib::Response& res) {
    ChatCompletions(gateway, t, info, req, res);
  });
  // With API keys, the API's other paths need one too (the generating
  // ones check theirs with the model and hold it while they run); /health
  // and /metrics stay open, for probes and scrapers.
  http.set_pre_routing_handler([gateway](const httplib::Request& req, httplib::Response& res) {
    if (req.path == "/v1/models" || req.path == "/tokenize" || req.path == "/detokenize") {
      auto lease = gateway->Authorize(req.get_header_value("Authorization"), "");
      if (!lease.ok()) {
        SendError(res, lease.status());
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  http.Get("/v1/models", [info, started](const httplib::Request&, httplib::Response& res) {
    Json model = {{"id", info.name()},       {"object", "model"},   {"created", started},
                  {"owned_by", "moemesh"},   {"root", info.name()}, {"max_model_len", info.context_length()},
                  {"vocab_size", info.vocab_size()}};
    res.set_content(Json({{"object", "list"}, {"data", Json::array({model})}}).dump(-1, ' ', false,
                                                                                  Json::error_handler_t::replace),
                    "application/json");
  });
  http.Post("/tokenize", [gateway, info, t = options.chat_template](const httplib::Request& req,
                                                                    httplib::Response& res) {
    absl::StatusOr<Json> j = JsonBody(req);
    if (!j.ok()) return SendError(res, j.status());
    absl::StatusOr<std::string> model = StringField(*j, "model", "");
    if (!model.ok()) return SendError(res, model.status());
    std::vector<int> ids;
    if (j->contains("messages")) {  // as a chat request with these messages would see them
      const nlohmann::ordered_json body = nlohmann::ordered_json::parse(req.body);
      absl::StatusOr<nlohmann::ordered_json> context = ChatTemplateContext(body);
      if (!context.ok()) return SendError(res, context.status());
      const auto cont = body.find("continue_final_message");
      absl::StatusOr<std::vector<int>> chat_ids =
          ChatPromptIds(gateway, t, *model, *context, cont != body.end() && cont->is_boolean() && cont->get<bool>());
      if (!chat_ids.ok()) return SendError(res, chat_ids.status());
      ids = *std::move(chat_ids);
    } else {
      if (!j->contains("prompt") || !(*j)["prompt"].is_string()) {
        return SendError(res, absl::InvalidArgumentError("prompt: a string is required (or messages, for chat)"));
      }
      absl::StatusOr<bool> special = BoolField(*j, "add_special_tokens", true);
      if (!special.ok()) return SendError(res, special.status());
      v1::TokenizeRequest tr;
      tr.set_model(*model);
      tr.set_text((*j)["prompt"].get<std::string>());
      tr.set_add_special_tokens(*special);
      v1::TokenizeResponse out;
      if (absl::Status st = gateway->Tokenize(tr, &out); !st.ok()) return SendError(res, st);
      ids.assign(out.ids().begin(), out.ids().end());
    }
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

  // Debian's cpp-httplib listens with a backlog of 5, so a burst of new
  // clients loses connections: the listening socket is kept as it is made,
  // and listened on again with the system's backlog once bound. Token
  // chunks are small writes: no Nagle delay.
  auto listening = std::make_shared<int>(-1);
  http.set_socket_options([listening](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    *listening = sock;
  });
  http.set_tcp_nodelay(true);
  fe->port_ = options.port == 0 ? http.bind_to_any_port(options.host)
                                : (http.bind_to_port(options.host, options.port) ? options.port : -1);
  if (fe->port_ > 0 && *listening >= 0) ::listen(*listening, SOMAXCONN);
  if (fe->port_ <= 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for HTTP on ", options.host, ":", options.port, " (in use, or not an address here)"));
  }
  fe->thread_ = std::thread([s = fe->server_.get()] {
    s->server->listen_after_bind();
    s->listened = true;
  });
  return fe;
}

HttpFrontEnd::~HttpFrontEnd() {
  // cpp-httplib's stop() does nothing until the listening loop has begun:
  // asked again until the loop is over.
  while (thread_.joinable() && !server_->listened.load()) {
    server_->server->stop();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (thread_.joinable()) thread_.join();
}

}  // namespace moemesh
