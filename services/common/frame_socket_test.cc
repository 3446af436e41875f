#include "services/common/frame_socket.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "gtest/gtest.h"
#include "moemesh/v1/expert.pb.h"

namespace moemesh {
namespace {

// Echoes every frame back, header and payload.
std::unique_ptr<FrameServer> EchoServer() {
  auto s = FrameServer::Start("127.0.0.1", 0, [](FrameSocket* sock) {
    v1::DispatchRequest h;
    std::vector<char> p;
    while (sock->Receive(&h, &p).ok()) {
      iovec v{p.data(), p.size()};
      if (!sock->Send(h, {&v, 1}).ok()) return;
    }
  });
  EXPECT_TRUE(s.ok()) << s.status();
  return std::move(*s);
}

// Writing to a peer that has gone is an error to handle (a retry on another
// replica), not a SIGPIPE that kills the process (the signal keeps its
// default action in this test).
TEST(FrameSocketTest, PeerGoneIsAnErrorNotASignal) {
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  FrameSocket sender(fds[0]);
  close(fds[1]);
  std::vector<char> payload(1 << 20, 'x');
  iovec v{payload.data(), payload.size()};
  v1::DispatchRequest h;
  EXPECT_FALSE(sender.Send(h, {&v, 1}).ok());
  EXPECT_FALSE(sender.Send(h, {&v, 1}).ok());
}

TEST(FrameSocketTest, CarriesHeaderAndGatheredPayload) {
  auto server = EchoServer();
  auto c = FrameSocket::Connect("127.0.0.1", server->port());
  ASSERT_TRUE(c.ok()) << c.status();
  for (size_t size : {size_t{0}, size_t{1}, size_t{4096}, size_t{3} << 20}) {
    std::vector<char> a(size / 2), b(size - size / 2);
    for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<char>(i * 7);
    for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<char>(i * 13 + 1);
    v1::DispatchRequest h;
    h.set_step(size);
    h.set_layer(3);
    iovec parts[2] = {{a.data(), a.size()}, {b.data(), b.size()}};
    ASSERT_TRUE((*c)->Send(h, parts).ok());
    v1::DispatchRequest got;
    std::vector<char> payload;
    ASSERT_TRUE((*c)->Receive(&got, &payload).ok());
    EXPECT_EQ(got.step(), size);
    EXPECT_EQ(got.layer(), 3);
    std::vector<char> want = a;
    want.insert(want.end(), b.begin(), b.end());
    EXPECT_EQ(payload, want) << size;
  }
}

TEST(FrameSocketTest, PeerGoneIsUnavailableAndGarbageIsDataLoss) {
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  FrameSocket a(fds[0]);
  ASSERT_EQ(write(fds[1], "GET / HTTP/1.1\r\n", 16), 16);
  v1::DispatchRequest h;
  std::vector<char> p;
  EXPECT_EQ(a.Receive(&h, &p).code(), absl::StatusCode::kDataLoss);
  close(fds[1]);
  EXPECT_EQ(a.Receive(&h, &p).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(FrameSocket::Connect("127.0.0.1", 1).status().code(), absl::StatusCode::kUnavailable);
}

TEST(FrameSocketTest, RefusesOversizedFramesBeforeAllocating) {
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  FrameSocket a(fds[0]);
  char prefix[16] = {'M', 'M', 'F', '1'};
  const uint64_t huge = uint64_t{1} << 40;  // a terabyte
  std::memcpy(prefix + 8, &huge, 8);
  ASSERT_EQ(write(fds[1], prefix, sizeof prefix), 16);
  v1::DispatchRequest h;
  std::vector<char> p;
  absl::Status st = a.Receive(&h, &p);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_TRUE(p.empty());
  close(fds[1]);
}

// A frame that announces 512 MiB and then stops: the receiver has not
// allocated what was announced, only what came.
TEST(FrameSocketTest, AnnouncedSizesAreNotAllocatedAhead) {
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  FrameSocket a(fds[0]);
  char prefix[16] = {'M', 'M', 'F', '1'};
  const uint64_t announced = FrameSocket::kMaxPayloadBytes;
  std::memcpy(prefix + 8, &announced, 8);
  ASSERT_EQ(write(fds[1], prefix, sizeof prefix), 16);
  ASSERT_EQ(write(fds[1], "0123456789", 10), 10);  // 10 payload bytes, then the peer leaves
  close(fds[1]);
  v1::DispatchRequest h;
  std::vector<char> p;
  absl::Status st = a.Receive(&h, &p);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_LE(p.capacity(), size_t{2} << 20);
}

TEST(FrameSocketTest, StopEndsConnectionsInProgress) {
  auto server = EchoServer();
  auto c = FrameSocket::Connect("127.0.0.1", server->port());
  ASSERT_TRUE(c.ok());
  v1::DispatchRequest h;
  ASSERT_TRUE((*c)->Send(h, {}).ok());
  std::vector<char> p;
  ASSERT_TRUE((*c)->Receive(&h, &p).ok());
  server->Stop();  // joins the connection's thread: it must not hang
  EXPECT_EQ((*c)->Receive(&h, &p).code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace moemesh
