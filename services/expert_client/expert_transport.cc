#include "services/expert_client/expert_transport.h"

#include "moemesh/v1/expert.pb.h"
#include "absl/strings/str_cat.h"
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

namespace {

NegotiatedTransport NegotiateHostTransport(const std::string& address, const v1::ShardInfo& info,
                                       std::shared_ptr<grpc::Channel> channel, const TransportOptions& options) {
  const int hidden = options.hidden_size;
  // Targets with a scheme name no TCP host (unix:PATH may even end in digits).
  bool schemed = false;
  for (const char* scheme : {"unix:", "unix-abstract:", "vsock:", "dns:", "ipv4:", "ipv6:"}) {
    schemed = schemed || address.rfind(scheme, 0) == 0;
  }
  if (options.allow_data_channel && info.data_port() > 0 && !schemed) {
    // The data channel is on the worker's host, at the port it advertises,
    // where the address is a plain HOST:PORT or [V6]:PORT; other gRPC
    // target forms (unix:, dns:, ipv4: ...) keep to the gRPC stream.
    const size_t colon = address.rfind(':');
    std::string host = colon == std::string::npos ? std::string() : address.substr(0, colon);
    const std::string target_port = colon == std::string::npos ? std::string() : address.substr(colon + 1);
    const bool numeric_port =
        !target_port.empty() && target_port.find_first_not_of("0123456789") == std::string::npos;
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
      host = host.substr(1, host.size() - 2);  // an IPv6 literal
    } else if (host.find(':') != std::string::npos) {
      host.clear();  // a scheme
    }
    if (numeric_port && !host.empty() && host.find('/') == std::string::npos) {
      const int port = info.data_port(), timeout = options.receive_timeout_ms;
      return {"frames", [host, port, hidden, timeout] {
                return std::make_unique<FrameTransport>(host, port, hidden, timeout);
              }};
    }
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
