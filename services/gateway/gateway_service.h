#ifndef MOEMESH_SERVICES_GATEWAY_GATEWAY_SERVICE_H_
#define MOEMESH_SERVICES_GATEWAY_GATEWAY_SERVICE_H_

#include "moemesh/v1/gateway.grpc.pb.h"

namespace moemesh {

class Gateway;

// gRPC adapter of a Gateway (the public API). Each router call that
// Generate makes is derived from the client's call, so it carries the
// client's deadline and cancellation.
class GatewayServiceImpl final : public v1::Gateway::Service {
 public:
  // `gateway` must outlive the service.
  explicit GatewayServiceImpl(Gateway* gateway) : gateway_(gateway) {}

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override;
  grpc::Status Detokenize(grpc::ServerContext* context, const v1::DetokenizeRequest* request,
                          v1::DetokenizeResponse* response) override;
  grpc::Status ListModels(grpc::ServerContext* context, const v1::ListModelsRequest* request,
                          v1::ListModelsResponse* response) override;

 private:
  Gateway* gateway_;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_GATEWAY_GATEWAY_SERVICE_H_
