#include "services/expert_client/expert_transport.h"

#include "moemesh/v1/expert.pb.h"
#include "services/expert_client/frame_transport.h"
#include "services/expert_client/grpc_stream_transport.h"

namespace moemesh {

ExpertTransportFactory NegotiateTransport(const std::string& address, const v1::ShardInfo& info,
                                          std::shared_ptr<grpc::Channel> channel, const TransportOptions& options) {
  const int hidden = options.hidden_size;
  if (options.allow_data_channel && info.data_port() > 0 && address.rfind("unix:", 0) != 0) {
    // The data channel is on the worker's host, at the port it advertises
    // (not over a Unix socket address, which has no port).
    const size_t colon = address.rfind(':');
    std::string host = colon == std::string::npos ? std::string() : address.substr(0, colon);
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    if (!host.empty() && host.find('/') == std::string::npos) {
      const int port = info.data_port();
      return [host, port, hidden] { return std::make_unique<FrameTransport>(host, port, hidden); };
    }
  }
  return [channel, hidden] { return std::make_unique<GrpcStreamTransport>(channel, hidden); };
}

}  // namespace moemesh
