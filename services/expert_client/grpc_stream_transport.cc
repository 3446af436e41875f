#include "services/expert_client/grpc_stream_transport.h"

#include <cstring>

namespace moemesh {

GrpcStreamTransport::GrpcStreamTransport(std::shared_ptr<grpc::Channel> channel, int hidden_size)
    : hidden_size_(hidden_size), stub_(v1::ExpertService::NewStub(std::move(channel))) {
  stream_ = stub_->Dispatch(&context_);
}

GrpcStreamTransport::~GrpcStreamTransport() {
  context_.TryCancel();
  stream_->Finish();
}

absl::Status GrpcStreamTransport::Send(const v1::DispatchRequest& header, absl::Span<const iovec> rows) {
  full_ = header;
  size_t bytes = 0;
  for (const iovec& v : rows) bytes += v.iov_len;
  std::string* data = full_.mutable_hidden_states()->mutable_data();
  data->resize(bytes);
  char* p = data->data();
  for (const iovec& v : rows) {
    std::memcpy(p, v.iov_base, v.iov_len);
    p += v.iov_len;
  }
  if (!stream_->Write(full_)) return absl::UnavailableError("the Dispatch stream closed");
  return absl::OkStatus();
}

absl::Status GrpcStreamTransport::Receive(v1::DispatchResponse* response, F32Matrix* outputs) {
  if (!stream_->Read(response)) return absl::UnavailableError("the Dispatch stream closed");
  if (response->error_code() != 0) return absl::OkStatus();
  auto m = GetF32Matrix(response->outputs(), hidden_size_, "outputs");
  if (!m.ok()) return absl::InternalError(m.status().message());
  *outputs = *m;
  return absl::OkStatus();
}

}  // namespace moemesh
