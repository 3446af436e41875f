#ifndef MOEMESH_SERVICES_GATEWAY_OIP_SERVICE_H_
#define MOEMESH_SERVICES_GATEWAY_OIP_SERVICE_H_

#include <string>

#include "inference/grpc_predict_v2.grpc.pb.h"

namespace moemesh {

class Gateway;

// The Open Inference Protocol (KServe v2) over gRPC, on the gateway's port
// beside moemesh.v1.Gateway: an adapter of the same Gateway (oip_api.h says
// what the model takes and answers). ModelInfer answers a request whole;
// Triton's ModelStreamInfer serves the requests of a stream in order, each
// whole or (input `stream`) a response per piece of text, the last with
// triton_final_response; a request's failure there is an error_message,
// and the stream goes on. With the gateway's API keys, every RPC but
// ServerLive and ServerReady needs one (`authorization` metadata).
class OipServiceImpl final : public inference::GRPCInferenceService::Service {
 public:
  // `gateway` must outlive the service; `model` is the served model's name.
  OipServiceImpl(Gateway* gateway, std::string model) : gateway_(gateway), model_(std::move(model)) {}

  grpc::Status ServerLive(grpc::ServerContext*, const inference::ServerLiveRequest*,
                          inference::ServerLiveResponse* response) override;
  grpc::Status ServerReady(grpc::ServerContext*, const inference::ServerReadyRequest*,
                           inference::ServerReadyResponse* response) override;
  grpc::Status ModelReady(grpc::ServerContext* context, const inference::ModelReadyRequest* request,
                          inference::ModelReadyResponse* response) override;
  grpc::Status ServerMetadata(grpc::ServerContext*, const inference::ServerMetadataRequest*,
                              inference::ServerMetadataResponse* response) override;
  grpc::Status ModelMetadata(grpc::ServerContext* context, const inference::ModelMetadataRequest* request,
                             inference::ModelMetadataResponse* response) override;
  grpc::Status ModelInfer(grpc::ServerContext* context, const inference::ModelInferRequest* request,
                          inference::ModelInferResponse* response) override;
  grpc::Status ModelStreamInfer(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<inference::ModelStreamInferResponse, inference::ModelInferRequest>* stream) override;

 private:
  bool Serves(const std::string& name, const std::string& version) const;

  Gateway* gateway_;
  const std::string model_;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_GATEWAY_OIP_SERVICE_H_
