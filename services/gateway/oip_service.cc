#include "services/gateway/oip_service.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/common/version.h"
#include "services/common/drain.h"
#include "services/common/grpc_status.h"
#include "services/gateway/call_auth.h"
#include "services/gateway/gateway.h"
#include "services/gateway/oip_api.h"

namespace moemesh {
namespace {

// Runs a parsed request; hands each piece of text to `sink(text, reason)`
// (whole: once, the prompt first unless excluded).
absl::Status Run(Gateway* gateway, grpc::ServerContext* context, const InferRequest& r,
                 const std::function<bool(const std::string&, v1::FinishReason)>& sink) {
  MM_ASSIGN_OR_RETURN(auto lease, gateway->Authorize(AuthorizationOf(*context), r.completion.request.model()));
  MM_RETURN_IF_ERROR(gateway->Check(r.completion.request));
  std::string whole = r.exclude_input ? "" : r.completion.request.text();
  return gateway->Generate(
      r.completion.request, [context] { return grpc::ClientContext::FromServerContext(*context); },
      [&](const v1::GenerateResponse& resp) {
        if (r.stream) {
          if (resp.text_delta().empty() && resp.finish_reason() == v1::FINISH_REASON_UNSPECIFIED) return true;
          return sink(resp.text_delta(), resp.finish_reason());
        }
        whole += resp.text_delta();
        if (resp.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) return sink(whole, resp.finish_reason());
        return true;
      },
      lease.get());
}

}  // namespace

bool OipServiceImpl::Serves(const std::string& name, const std::string& version) const {
  return name == model_ && (version.empty() || version == "1");
}

grpc::Status OipServiceImpl::ServerLive(grpc::ServerContext*, const inference::ServerLiveRequest*,
                                        inference::ServerLiveResponse* response) {
  response->set_live(true);
  return grpc::Status::OK;
}

grpc::Status OipServiceImpl::ServerReady(grpc::ServerContext*, const inference::ServerReadyRequest*,
                                         inference::ServerReadyResponse* response) {
  response->set_ready(RefuseWhileDraining("this gateway").ok());
  return grpc::Status::OK;
}

grpc::Status OipServiceImpl::ModelReady(grpc::ServerContext* context, const inference::ModelReadyRequest* request,
                                        inference::ModelReadyResponse* response) {
  auto lease = gateway_->Authorize(AuthorizationOf(*context), request->name());
  if (!lease.ok() && !absl::IsPermissionDenied(lease.status())) return ToGrpcStatus(lease.status());
  response->set_ready(Serves(request->name(), request->version()) && RefuseWhileDraining("this gateway").ok());
  return grpc::Status::OK;
}

grpc::Status OipServiceImpl::ServerMetadata(grpc::ServerContext*, const inference::ServerMetadataRequest*,
                                            inference::ServerMetadataResponse* response) {
  response->set_name("moemesh");
  response->set_version(VersionString());
  return grpc::Status::OK;
}

grpc::Status OipServiceImpl::ModelMetadata(grpc::ServerContext* context,
                                           const inference::ModelMetadataRequest* request,
                                           inference::ModelMetadataResponse* response) {
  auto lease = gateway_->Authorize(AuthorizationOf(*context), request->name());
  if (!lease.ok() && !absl::IsPermissionDenied(lease.status())) return ToGrpcStatus(lease.status());
  if (!Serves(request->name(), request->version())) {
    return ToGrpcStatus(absl::NotFoundError(absl::StrCat("no model '", request->name(), "' (version '",
                                                         request->version(), "'); this gateway serves '", model_,
                                                         "', version 1")));
  }
  *response = moemesh::ModelMetadata(model_);
  return grpc::Status::OK;
}

grpc::Status OipServiceImpl::ModelInfer(grpc::ServerContext* context, const inference::ModelInferRequest* request,
                                        inference::ModelInferResponse* response) {
  if (absl::Status st = RefuseWhileDraining("this gateway"); !st.ok()) return ToGrpcStatus(st);
  absl::StatusOr<InferRequest> r = ParseInferRequest(*request);
  if (!r.ok()) return ToGrpcStatus(r.status());
  if (r->stream) {
    return ToGrpcStatus(absl::InvalidArgumentError("stream: a streamed answer needs ModelStreamInfer"));
  }
  return ToGrpcStatus(Run(gateway_, context, *r, [&](const std::string& text, v1::FinishReason reason) {
    *response = InferResponse(*request, model_, text, reason, /*final=*/true);
    return true;
  }));
}

grpc::Status OipServiceImpl::ModelStreamInfer(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<inference::ModelStreamInferResponse, inference::ModelInferRequest>* stream) {
  inference::ModelInferRequest request;
  while (stream->Read(&request)) {
    absl::Status st = RefuseWhileDraining("this gateway");
    absl::StatusOr<InferRequest> r = st.ok() ? ParseInferRequest(request) : absl::StatusOr<InferRequest>(st);
    if (r.ok()) {
      st = Run(gateway_, context, *r, [&](const std::string& text, v1::FinishReason reason) {
        inference::ModelStreamInferResponse out;
        *out.mutable_infer_response() =
            InferResponse(request, model_, text, reason, reason != v1::FINISH_REASON_UNSPECIFIED);
        return stream->Write(out);
      });
    } else {
      st = r.status();
    }
    if (context->IsCancelled()) return grpc::Status::CANCELLED;
    if (!st.ok()) {
      inference::ModelStreamInferResponse out;
      out.set_error_message(absl::StrCat(absl::StatusCodeToString(st.code()), ": ", st.message()));
      out.mutable_infer_response()->set_id(request.id());
      if (!stream->Write(out)) return grpc::Status::CANCELLED;
    }
  }
  return grpc::Status::OK;
}

}  // namespace moemesh
