#ifndef MOEMESH_SERVICES_GATEWAY_GATEWAY_SERVICE_H_
#define MOEMESH_SERVICES_GATEWAY_GATEWAY_SERVICE_H_

#include <atomic>

#include "moemesh/v1/gateway.grpc.pb.h"
#include "services/gateway/request_builder.h"

namespace moemesh {

class GatewayMetrics;
class RouterPool;
class Tokenizer;

// The public API. Generate validates and tokenizes the request, admits it
// if fewer than max_in_flight requests are in progress (RESOURCE_EXHAUSTED
// otherwise), sends it to a router (sticky by session id; the next router
// when one is unavailable before it produced anything), and streams the
// tokens back as text with stop sequences applied. The router call carries
// the client's deadline and cancellation, so a client that leaves frees its
// KV cache; a stop sequence cancels the router call the same way.
class GatewayServiceImpl final : public v1::Gateway::Service {
 public:
  struct Options {
    int max_in_flight = 512;
  };
  // `tokenizer` (may be null: token ids only), `routers` and `metrics`
  // (may be null) must outlive the service.
  GatewayServiceImpl(const Tokenizer* tokenizer, ServedModel model, RouterPool* routers, const Options& options,
                     GatewayMetrics* metrics = nullptr)
      : tokenizer_(tokenizer), model_(std::move(model)), routers_(routers), options_(options), metrics_(metrics) {}

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override;
  grpc::Status Detokenize(grpc::ServerContext* context, const v1::DetokenizeRequest* request,
                          v1::DetokenizeResponse* response) override;
  grpc::Status ListModels(grpc::ServerContext* context, const v1::ListModelsRequest* request,
                          v1::ListModelsResponse* response) override;

  int in_flight() const { return in_flight_.load(); }

 private:
  grpc::Status GenerateImpl(grpc::ServerContext* context, const v1::GenerateRequest* request,
                            grpc::ServerWriter<v1::GenerateResponse>* writer);
  void Rejected(const grpc::Status& st);

  const Tokenizer* tokenizer_;
  const ServedModel model_;
  RouterPool* routers_;
  const Options options_;
  std::atomic<int> in_flight_{0};
  GatewayMetrics* metrics_;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_GATEWAY_GATEWAY_SERVICE_H_
