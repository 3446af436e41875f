// Which transport a worker gets, from its address and what it advertises.
#include "services/expert_client/expert_transport.h"

#include <grpcpp/grpcpp.h>

#include "gtest/gtest.h"
#include "core/experts/expert_executor.h"
#include "moemesh/v1/expert.pb.h"
#include "services/common/host_id.h"

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

// A transport that only names itself: what a device_rows hook wraps.
class Named : public ExpertTransport {
 public:
  explicit Named(std::string name) : name_(std::move(name)) {}
  absl::Status Send(const v1::DispatchRequest&, absl::Span<const iovec>) override { return absl::OkStatus(); }
  absl::Status Receive(v1::DispatchResponse*, F32Matrix*) override { return absl::OkStatus(); }
  absl::string_view name() const override { return name_; }

 private:
  std::string name_;
};

// The cuda-ipc hook wraps the host's transport only for a worker that
// offers it from this host; the wrapped one is what it would be without.
TEST(NegotiateTransportTest, CudaIpcOnlyForAWorkerOfThisHost) {
  ASSERT_FALSE(HostId().empty()) << "no /proc/sys/kernel/random/boot_id";
  auto channel = grpc::CreateChannel("127.0.0.1:1", grpc::InsecureChannelCredentials());
  TransportOptions options;
  options.hidden_size = 8;
  std::string wrapped;
  options.device_rows = [&wrapped](const v1::ShardInfo&, ExpertTransportFactory control) -> ExpertTransportFactory {
    wrapped = std::string(control()->name());
    return [] { return std::make_unique<Named>("cuda-ipc"); };
  };
  v1::ShardInfo info;
  info.set_data_port(7000);
  EXPECT_EQ(NegotiateTransport("127.0.0.1:50051", info, channel, options).name, "frames");  // not offered
  info.mutable_cuda_ipc()->set_host_id("another-host");
  EXPECT_EQ(NegotiateTransport("127.0.0.1:50051", info, channel, options).name, "frames");
  info.mutable_cuda_ipc()->set_host_id(HostId());
  NegotiatedTransport n = NegotiateTransport("127.0.0.1:50051", info, channel, options);
  EXPECT_EQ(n.name, "cuda-ipc");
  EXPECT_EQ(n.make()->name(), "cuda-ipc");
  EXPECT_EQ(wrapped, "frames");
  info.set_data_port(0);
  EXPECT_EQ(NegotiateTransport("127.0.0.1:50051", info, channel, options).name, "cuda-ipc");
  EXPECT_EQ(wrapped, "grpc-stream");
  // Without the hook (a CPU router, a build without CUDA): the host's.
  options.device_rows = nullptr;
  EXPECT_EQ(NegotiateTransport("127.0.0.1:50051", info, channel, options).name, "grpc-stream");
  // And a transport of host rows refuses device rows with the reason.
  EXPECT_EQ(Named("frames").cuda_device(), -1);
  EXPECT_EQ(Named("frames").SendOnDevice(v1::DispatchRequest(), ExpertBatch()).code(),
            absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace moemesh
