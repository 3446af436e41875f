#include "services/expert_client/expert_transport.h"

#include "moemesh/v1/expert.pb.h"
#include "absl/strings/str_cat.h"
#include "services/common/frame_socket.h"
#include "services/common/host_id.h"
#include "services/expert_client/frame_transport.h"
#include "services/expert_client/grpc_stream_transport.h"

namespace moemesh {

absl::Status ExpertTransport::SendOnDevice(const v1::DispatchRequest&, const ExpertBatch&) {
  return absl::UnimplementedError(absl::StrCat("the ", name(), " transport takes rows in host memory"));
}

absl::Status ExpertTransport::ReceiveOnDevice(v1::DispatchResponse*, F32Matrix*, float*, void*) {
  return absl::UnimplementedError(absl::StrCat("the ", name(), " transport takes rows in host memory"));
}

absl::Status ExpertTransport::BeginRecording() {
  return absl::UnimplementedError(absl::StrCat("the ", name(), " transport cannot record GPU work"));
}

absl::StatusOr<int64_t> ExpertTransport::EndRecording(bool) {
  return absl::UnimplementedError(absl::StrCat("the ", name(), " transport cannot record GPU work"));
}

absl::Status ExpertTransport::ArmReplay(int64_t) {
  return absl::UnimplementedError(absl::StrCat("the ", name(), " transport cannot record GPU work"));
}

absl::Status ExpertTransport::SendReplay(uint64_t*) {
  return absl::UnimplementedError(absl::StrCat("the ", name(), " transport cannot record GPU work"));
}

namespace {

NegotiatedTransport NegotiateHostTransport(const std::string& address, const v1::ShardInfo& info,
                                       std::shared_ptr<grpc::Channel> channel, const TransportOptions& options) {
  const int hidden = options.hidden_size;
  // The data channel is on the worker's host, at the port it advertises.
  const std::string host = DataChannelHost(address);
  if (options.allow_data_channel && info.data_port() > 0 && !host.empty()) {
    const int port = info.data_port(), timeout = options.receive_timeout_ms;
    return {"frames", [host, port, hidden, timeout] {
              return std::make_unique<FrameTransport>(host, port, hidden, timeout);
            }};
  }
  const int timeout = options.receive_timeout_ms;
  return {"grpc-stream", [channel, hidden, timeout] {
            return std::make_unique<GrpcStreamTransport>(channel, hidden, timeout);
          }};
}

}  // namespace

NegotiatedTransport NegotiateTransport(const std::string& address, const v1::ShardInfo& info,
                                       std::shared_ptr<grpc::Channel> channel, const TransportOptions& options) {
  NegotiatedTransport host = NegotiateHostTransport(address, info, std::move(channel), options);
  // CUDA IPC only between processes of one host (one kernel boot).
  const std::string here = HostId();
  if (options.device_rows && info.has_cuda_ipc() && !here.empty() && info.cuda_ipc().host_id() == here) {
    return {"cuda-ipc", options.device_rows(info, std::move(host.make))};
  }
  return host;
}

}  // namespace moemesh
