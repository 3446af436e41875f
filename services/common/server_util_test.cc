// The limits every service's server enforces on its connections, over a
// real socket (the gRPC health service stands in for a service).
#include "services/common/server_util.h"

#include <chrono>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "gtest/gtest.h"
#include "moemesh/v1/gateway.grpc.pb.h"

namespace moemesh {
namespace {

class ServerLimitsTest : public ::testing::Test {
 protected:
  void Start(const ServerLimits& limits) {
    int port = 0;
    server_ = StartServer("127.0.0.1:0", {}, &port, limits);
    ASSERT_NE(server_, nullptr);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials());
    stub_ = std::make_unique<grpc::GenericStub>(channel_);
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
  }
  // grpc.health.v1.Health/Check of the whole server (an empty request:
  // Debian ships no header of the health proto).
  grpc::Status Check(size_t metadata_bytes, bool wait_for_ready = false) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    ctx.set_wait_for_ready(wait_for_ready);
    if (metadata_bytes > 0) ctx.AddMetadata("x-padding", std::string(metadata_bytes, 'a'));
    grpc::Slice empty("");
    grpc::ByteBuffer in(&empty, 1), out;
    std::promise<grpc::Status> done;
    stub_->UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &in, &out,
                     [&done](grpc::Status st) { done.set_value(st); });
    return done.get_future().get();
  }

  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<grpc::GenericStub> stub_;
};

TEST_F(ServerLimitsTest, OversizedHeadersAreRefusedOthersServed) {
  ServerLimits limits;
  limits.max_metadata_bytes = 2 << 10;
  Start(limits);
  EXPECT_TRUE(Check(512).ok());
  EXPECT_FALSE(Check(4 << 10).ok()) << "gRPC's own default (8 KiB) would take it";
  // gRPC closes the offending connection (a call racing the close fails);
  // the client connects again and is served.
  bool served = false;
  for (int i = 0; i < 50 && !served; ++i) {
    served = Check(0, /*wait_for_ready=*/true).ok();
    if (!served) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(served) << "a refused call leaves the server serving";
}

TEST_F(ServerLimitsTest, IdleConnectionsAreClosed) {
  ServerLimits limits;
  limits.max_connection_idle_ms = 300;
  Start(limits);
  ASSERT_TRUE(Check(0).ok());
  EXPECT_EQ(channel_->GetState(false), GRPC_CHANNEL_READY);
  grpc_connectivity_state state = GRPC_CHANNEL_READY;
  for (int i = 0; i < 50 && state == GRPC_CHANNEL_READY; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    state = channel_->GetState(false);
  }
  EXPECT_EQ(state, GRPC_CHANNEL_IDLE) << "the server closed the idle connection";
  EXPECT_TRUE(Check(0, /*wait_for_ready=*/true).ok()) << "and a new call connects again";
}

// A request protobuf cannot parse (proto3 refuses a string field that is
// not UTF-8) is INVALID_ARGUMENT saying so, not gRPC's INTERNAL with an
// empty message; a valid one reaches its handler.
TEST(ParseErrorTest, InvalidUtf8IsInvalidArgumentSayingSo) {
  v1::Gateway::Service bare;  // every method UNIMPLEMENTED: only parsing is tested
  int port = 0;
  std::vector<std::string> unparsed;  // told of each
  ServerLimits limits;
  limits.on_unparsed = [&unparsed](const std::string& method) { unparsed.push_back(method); };
  std::unique_ptr<grpc::Server> server = StartServer("127.0.0.1:0", {&bare}, &port, limits);
  ASSERT_NE(server, nullptr);
  grpc::GenericStub stub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  auto call = [&stub](const std::string& bytes) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc::Slice slice(bytes);
    grpc::ByteBuffer in(&slice, 1), out;
    std::promise<grpc::Status> done;
    stub.UnaryCall(&ctx, "/moemesh.v1.Gateway/Tokenize", grpc::StubOptions(), &in, &out,
                   [&done](grpc::Status st) { done.set_value(st); });
    return done.get_future().get();
  };
  // TokenizeRequest.text (field 2) = "\xff\xfe".
  const grpc::Status bad = call(std::string("\x12\x02\xff\xfe", 4));
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << bad.error_message();
  EXPECT_NE(bad.error_message().find("UTF-8"), std::string::npos) << bad.error_message();
  EXPECT_NE(bad.error_message().find("/moemesh.v1.Gateway/Tokenize"), std::string::npos) << bad.error_message();
  EXPECT_EQ(call(std::string("\x12\x02hi", 4)).error_code(), grpc::StatusCode::UNIMPLEMENTED) << "a valid request";
  EXPECT_EQ(unparsed, std::vector<std::string>{"/moemesh.v1.Gateway/Tokenize"});
  server->Shutdown(std::chrono::system_clock::now());
}

}  // namespace
}  // namespace moemesh
