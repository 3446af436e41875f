#ifndef MOEMESH_SERVICES_GATEWAY_GATEWAY_H_
#define MOEMESH_SERVICES_GATEWAY_GATEWAY_H_

#include <atomic>
#include <functional>
#include <memory>
#include <optional>

#include <grpcpp/client_context.h>

#include "absl/status/status.h"
#include "moemesh/v1/gateway.pb.h"
#include "services/gateway/api_keys.h"
#include "services/gateway/request_builder.h"
#include "services/gateway/session.h"

namespace moemesh {

class GatewayMetrics;
class RouterPool;
class Tokenizer;

// The gateway's logic, apart from its gRPC server (GatewayServiceImpl adapts
// it). Generate validates and tokenizes the request, admits it if fewer than
// max_in_flight requests are in progress (RESOURCE_EXHAUSTED otherwise),
// sends it to a router (sticky by session id; the next router when one is
// unavailable before it produced anything), and streams the tokens back as
// text with stop sequences applied. Thread-safe.
class Gateway {
 public:
  struct Options {
    int max_in_flight = 512;
    // Where sessions are kept (GenerateRequest.continue_session); null:
    // nowhere, and such requests get FAILED_PRECONDITION. Must outlive the
    // gateway.
    SessionClient* sessions = nullptr;
    // Tokens a session's turn may take, history and max_tokens included;
    // 0: the model's context.
    int session_window = 0;
    // The API keys calls must present (Authorize); null: none needed. Must
    // outlive the gateway.
    ApiKeys* api_keys = nullptr;
  };
  // Makes the context of one router call. The gRPC adapter derives it from
  // the client's call (grpc::ClientContext::FromServerContext), so the
  // router call carries the client's deadline and cancellation, and a
  // client that leaves frees the router's KV cache.
  using RouterCallContext = std::function<std::unique_ptr<grpc::ClientContext>()>;
  // Takes one response for the client; false when the client went away.
  using ResponseSink = std::function<bool(const v1::GenerateResponse&)>;

  // `tokenizer` (may be null: token ids only), `routers` and `metrics` (may
  // be null) must outlive the gateway.
  Gateway(const Tokenizer* tokenizer, ServedModel model, RouterPool* routers, const Options& options,
          GatewayMetrics* metrics = nullptr)
      : tokenizer_(tokenizer), model_(std::move(model)), routers_(routers), options_(options), metrics_(metrics) {}

  // Runs one request, handing each response to `sink`; the last one has a
  // finish reason and the usage. Errors: those of BuildRouterRequest (no
  // router is called), RESOURCE_EXHAUSTED at the in-flight limit,
  // UNAVAILABLE when no router could take the request, CANCELLED when the
  // sink returned false, else the router's status. A stop sequence cancels
  // the router call. Counted in the metrics by the status's code name.
  // `lease` (may be null) is charged the tokens the request used, its
  // prompt's and those generated, also when it ends early.
  absl::Status Generate(const v1::GenerateRequest& request, const RouterCallContext& new_router_call,
                        const ResponseSink& sink, ApiKeys::Lease* lease = nullptr);
  // Admits a call that presents `authorization` ("Bearer KEY") to `model`
  // (empty: the served one) under the API keys; null when the gateway needs
  // none. Refusals (UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED)
  // are counted as rejections; no router sees the call.
  absl::StatusOr<std::unique_ptr<ApiKeys::Lease>> Authorize(absl::string_view authorization,
                                                            absl::string_view model);
  // What Generate would refuse before calling a router (except what a
  // session's history adds): for front ends that must answer before
  // streaming.
  absl::Status Check(const v1::GenerateRequest& request) const;
  // NOT_FOUND for another model's name; FAILED_PRECONDITION without a
  // tokenizer.
  absl::Status Tokenize(const v1::TokenizeRequest& request, v1::TokenizeResponse* response) const;
  // As Tokenize, and INVALID_ARGUMENT for ids outside the vocabulary.
  absl::Status Detokenize(const v1::DetokenizeRequest& request, v1::DetokenizeResponse* response) const;
  // The one model served here.
  absl::Status ListModels(const v1::ListModelsRequest& request, v1::ListModelsResponse* response) const;

  // Generate calls admitted and in progress (and, briefly, those being
  // refused at the limit).
  int in_flight() const { return in_flight_.load(); }

 private:
  absl::Status GenerateImpl(const v1::GenerateRequest& request, const RouterCallContext& new_router_call,
                            const ResponseSink& sink);
  void Rejected(const absl::Status& st);
  // For continue_session: loads the session and returns it with the turn's
  // router request, the prompt then holding its history; without
  // continue_session, the plain router request.
  absl::StatusOr<v1::RouterGenerateRequest> BuildTurn(const v1::GenerateRequest& request,
                                                      std::optional<SessionTurn>* session);

  const Tokenizer* tokenizer_;
  const ServedModel model_;
  RouterPool* routers_;
  const Options options_;
  std::atomic<int> in_flight_{0};
  GatewayMetrics* metrics_;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_GATEWAY_GATEWAY_H_
