#ifndef MOEMESH_SERVICES_EXPERT_CLIENT_GRPC_STREAM_TRANSPORT_H_
#define MOEMESH_SERVICES_EXPERT_CLIENT_GRPC_STREAM_TRANSPORT_H_

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "moemesh/v1/expert.grpc.pb.h"
#include "services/expert_client/expert_transport.h"

namespace moemesh {

// The portable fallback: the worker's gRPC Dispatch stream, one long-lived
// bidirectional stream per router and worker. The rows are copied once,
// into the request message. Opens the stream on construction; cancels it
// on destruction. With `receive_timeout_ms`, a watchdog cancels the stream
// when an awaited answer takes longer (a stopped or wedged worker): Receive
// is then UNAVAILABLE, as on the data channel.
class GrpcStreamTransport : public ExpertTransport {
 public:
  GrpcStreamTransport(std::shared_ptr<grpc::Channel> channel, int hidden_size, int receive_timeout_ms = 0);
  ~GrpcStreamTransport() override;

  absl::Status Send(const v1::DispatchRequest& header, absl::Span<const iovec> rows) override;
  absl::Status Receive(v1::DispatchResponse* response, F32Matrix* outputs) override;
  absl::string_view name() const override { return "grpc-stream"; }

 private:
  const int hidden_size_;
  std::unique_ptr<v1::ExpertService::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::DispatchRequest, v1::DispatchResponse>> stream_;
  v1::DispatchRequest full_;  // the request with its rows, reused
  std::vector<float> widened_;  // the answer's rows, widened where they came as bf16

  void Watch();
  const int timeout_ms_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool waiting_ = false, timed_out_ = false, stop_ = false;
  std::chrono::steady_clock::time_point deadline_;
  std::thread watchdog_;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_EXPERT_CLIENT_GRPC_STREAM_TRANSPORT_H_
