#ifndef MOEMESH_SERVICES_EXPERT_CLIENT_FRAME_TRANSPORT_H_
#define MOEMESH_SERVICES_EXPERT_CLIENT_FRAME_TRANSPORT_H_

#include <memory>
#include <string>
#include <vector>

#include "services/common/frame_socket.h"
#include "services/expert_client/expert_transport.h"

namespace moemesh {

// The raw data channel (FrameSocket): the rows are written by one writev
// straight from the caller's buffer, and the answer's rows read into a
// buffer reused from step to step. Connects on the first Send. With
// `receive_timeout_ms`, a worker silent for longer is UNAVAILABLE.
class FrameTransport : public ExpertTransport {
 public:
  FrameTransport(std::string host, int port, int hidden_size, int receive_timeout_ms = 0)
      : host_(std::move(host)), port_(port), hidden_size_(hidden_size), receive_timeout_ms_(receive_timeout_ms) {}

  absl::Status Send(const v1::DispatchRequest& header, absl::Span<const iovec> rows) override;
  absl::Status Receive(v1::DispatchResponse* response, F32Matrix* outputs) override;
  absl::string_view name() const override { return "frames"; }
  int answer_fd() const override { return socket_ ? socket_->pollable_fd() : -1; }

 private:
  const std::string host_;
  const int port_;
  const int hidden_size_;
  const int receive_timeout_ms_;
  std::unique_ptr<FrameSocket> socket_;
  std::vector<char> payload_;   // the last answer's rows
  std::vector<float> widened_;  // the same, widened where they came as bf16
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_EXPERT_CLIENT_FRAME_TRANSPORT_H_
