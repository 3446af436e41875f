#include "services/expert_client/frame_transport.h"

#include "absl/strings/str_cat.h"
#include "moemesh/v1/expert.pb.h"

namespace moemesh {

absl::Status FrameTransport::Send(const v1::DispatchRequest& header, absl::Span<const iovec> rows) {
  if (!socket_) {
    auto s = FrameSocket::Connect(host_, port_);
    if (!s.ok()) return s.status();
    socket_ = std::move(*s);
    if (receive_timeout_ms_ > 0) socket_->SetReceiveTimeout(receive_timeout_ms_);
  }
  return socket_->Send(header, rows);
}

absl::Status FrameTransport::Receive(v1::DispatchResponse* response, F32Matrix* outputs) {
  if (!socket_) return absl::UnavailableError("no request was sent on this data channel");
  if (absl::Status st = socket_->Receive(response, &payload_); !st.ok()) {
    return absl::UnavailableError(st.message());
  }
  *outputs = F32Matrix{};
  // An error, or the answer to CUDA IPC work (its rows are on a GPU).
  if (response->error_code() != 0 || !response->has_outputs()) return absl::OkStatus();
  auto m = GetRowsAsF32(response->outputs(), payload_.data(), payload_.size(), hidden_size_, "outputs",
                        v1::Tensor::default_instance(), &widened_);
  if (!m.ok()) return absl::InternalError(m.status().message());
  *outputs = *m;
  return absl::OkStatus();
}

}  // namespace moemesh
