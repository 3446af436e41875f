#include "services/gateway/gateway_service.h"

#include <memory>

#include <grpcpp/grpcpp.h>

#include "services/common/drain.h"
#include "services/common/grpc_status.h"
#include "services/gateway/call_auth.h"
#include "services/gateway/gateway.h"

namespace moemesh {

grpc::Status GatewayServiceImpl::Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                          grpc::ServerWriter<v1::GenerateResponse>* writer) {
  if (absl::Status st = RefuseWhileDraining("this gateway"); !st.ok()) return ToGrpcStatus(st);
  auto lease = gateway_->Authorize(AuthorizationOf(*context), request->model());
  if (!lease.ok()) return ToGrpcStatus(lease.status());
  return ToGrpcStatus(gateway_->Generate(
      *request, [context] { return grpc::ClientContext::FromServerContext(*context); },
      [writer](const v1::GenerateResponse& response) { return writer->Write(response); }, lease->get()));
}

grpc::Status GatewayServiceImpl::Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                                          v1::TokenizeResponse* response) {
  auto lease = gateway_->Authorize(AuthorizationOf(*context), request->model());
  if (!lease.ok()) return ToGrpcStatus(lease.status());
  return ToGrpcStatus(gateway_->Tokenize(*request, response));
}

grpc::Status GatewayServiceImpl::Detokenize(grpc::ServerContext* context, const v1::DetokenizeRequest* request,
                                            v1::DetokenizeResponse* response) {
  auto lease = gateway_->Authorize(AuthorizationOf(*context), request->model());
  if (!lease.ok()) return ToGrpcStatus(lease.status());
  return ToGrpcStatus(gateway_->Detokenize(*request, response));
}

grpc::Status GatewayServiceImpl::ListModels(grpc::ServerContext* context, const v1::ListModelsRequest* request,
                                            v1::ListModelsResponse* response) {
  auto lease = gateway_->Authorize(AuthorizationOf(*context), "");
  if (!lease.ok()) return ToGrpcStatus(lease.status());
  return ToGrpcStatus(gateway_->ListModels(*request, response));
}

}  // namespace moemesh
