// Which transport a worker gets, from its address and what it advertises.
#include "services/expert_client/expert_transport.h"

#include <grpcpp/grpcpp.h>

#include "gtest/gtest.h"
#include "moemesh/v1/expert.pb.h"

namespace moemesh {
namespace {

std::string Negotiated(const std::string& address, int data_port, bool allow = true) {
  v1::ShardInfo info;
  info.set_data_port(data_port);
  TransportOptions options;
  options.hidden_size = 8;
  options.allow_data_channel = allow;
  auto channel = grpc::CreateChannel("127.0.0.1:1", grpc::InsecureChannelCredentials());
  NegotiatedTransport n = NegotiateTransport(address, info, channel, options);
  std::unique_ptr<ExpertTransport> t = n.make();
  EXPECT_EQ(t->name(), n.name);
  return n.name;
}

TEST(NegotiateTransportTest, DataChannelOnlyForPlainHostPort) {
  EXPECT_EQ(Negotiated("127.0.0.1:50051", 7000), "frames");
  EXPECT_EQ(Negotiated("localhost:50051", 7000), "frames");
  EXPECT_EQ(Negotiated("[::1]:50051", 7000), "frames");
  // No data channel offered, or not allowed: the gRPC stream.
  EXPECT_EQ(Negotiated("127.0.0.1:50051", 0), "grpc-stream");
  EXPECT_EQ(Negotiated("127.0.0.1:50051", 7000, /*allow=*/false), "grpc-stream");
  // gRPC target forms whose host is not a plain host name.
  for (const char* a : {"unix:/tmp/worker.sock", "unix:50051", "unix-abstract:worker", "vsock:3:50051", "dns:///host:50051", "dns:host:50051",
                        "ipv4:10.0.0.1:50051", "ipv6:[::1]:50051", "host"}) {
    EXPECT_EQ(Negotiated(a, 7000), "grpc-stream") << a;
  }
}

}  // namespace
}  // namespace moemesh
