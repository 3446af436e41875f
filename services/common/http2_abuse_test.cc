// HTTP/2 abuse on a port served as the services serve theirs (StartServer
// with its limits), by a raw HTTP/2 client written here frame by frame: a
// ping flood is answered with GOAWAY and a closed connection; 300 idle
// connections leave the server's threads and memory bounded; oversized
// headers are refused; 20,000 streams opened and reset at once ("rapid
// reset") leave the threads bounded, a normal client served, and no
// memory behind once served (the peak is not bounded: see the test). A
// normal client is served throughout.
#include <arpa/inet.h>
#include <dirent.h>
#include <malloc.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "gtest/gtest.h"
#include "services/common/health_check.h"
#include "services/common/server_util.h"

namespace moemesh {
namespace {

enum FrameType : uint8_t { kHeaders = 1, kRstStream = 3, kSettings = 4, kPing = 6, kGoaway = 7 };
constexpr uint8_t kEndStream = 0x1, kEndHeaders = 0x4, kAck = 0x1;

// One HTTP/2 connection over a plain TCP socket, frames written by hand.
class RawHttp2 {
 public:
  explicit RawHttp2(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      close(fd_);
      fd_ = -1;
      return;
    }
    const std::string preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    Write(preface);
    Frame(kSettings, 0, 0, "");
  }
  ~RawHttp2() {
    if (fd_ >= 0) close(fd_);
  }
  bool ok() const { return fd_ >= 0; }

  // Writes a frame; false once the server has closed the connection.
  bool Frame(uint8_t type, uint8_t flags, uint32_t stream, const std::string& payload) {
    std::string f;
    const uint32_t n = static_cast<uint32_t>(payload.size());
    f += static_cast<char>(n >> 16);
    f += static_cast<char>(n >> 8);
    f += static_cast<char>(n);
    f += static_cast<char>(type);
    f += static_cast<char>(flags);
    for (int s = 24; s >= 0; s -= 8) f += static_cast<char>((stream >> s) & 0x7f);
    return Write(f + payload);
  }
  bool Ping() { return Frame(kPing, 0, 0, std::string(8, '\x01')); }
  // A gRPC call's headers (HPACK literals, no Huffman) on `stream`, with an
  // extra header of `pad` bytes.
  bool Headers(uint32_t stream, size_t pad = 0) {
    std::string block;
    auto literal = [&block](const std::string& name, const std::string& value) {
      block += '\0';  // literal without indexing, new name
      Length(name.size(), &block);
      block += name;
      Length(value.size(), &block);
      block += value;
    };
    literal(":method", "POST");
    literal(":scheme", "http");
    literal(":path", "/grpc.health.v1.Health/Check");
    literal(":authority", "localhost");
    literal("content-type", "application/grpc");
    literal("te", "trailers");
    if (pad > 0) literal("x-pad", std::string(pad, 'a'));
    return Frame(kHeaders, kEndHeaders, stream, block);
  }
  bool Reset(uint32_t stream) { return Frame(kRstStream, 0, stream, std::string("\0\0\0\x08", 4)); }  // CANCEL

  // Reads frames for up to `ms`: whether a GOAWAY came, and whether the
  // server then closed the connection.
  void Drain(int ms, bool* goaway, bool* closed) {
    *goaway = *closed = false;
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    std::string buf;
    char chunk[65536];
    while (std::chrono::steady_clock::now() < end) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      const ssize_t n = read(fd_, chunk, sizeof chunk);
      if (n <= 0) {
        *closed = true;
        return;
      }
      buf.append(chunk, n);
      while (buf.size() >= 9) {
        const size_t len = (static_cast<uint8_t>(buf[0]) << 16) | (static_cast<uint8_t>(buf[1]) << 8) |
                           static_cast<uint8_t>(buf[2]);
        if (buf.size() < 9 + len) break;
        if (static_cast<uint8_t>(buf[3]) == kGoaway) *goaway = true;
        if (static_cast<uint8_t>(buf[3]) == kSettings && !(buf[4] & kAck)) Frame(kSettings, kAck, 0, "");
        buf.erase(0, 9 + len);
      }
    }
  }

 private:
  static void Length(size_t n, std::string* out) {  // HPACK integer, 7-bit prefix
    if (n < 127) {
      *out += static_cast<char>(n);
      return;
    }
    *out += static_cast<char>(127);
    n -= 127;
    while (n >= 128) {
      *out += static_cast<char>((n & 0x7f) | 0x80);
      n >>= 7;
    }
    *out += static_cast<char>(n);
  }
  bool Write(const std::string& bytes) {
    size_t at = 0;
    while (at < bytes.size()) {
      const ssize_t n = send(fd_, bytes.data() + at, bytes.size() - at, MSG_NOSIGNAL);
      if (n <= 0) return false;
      at += static_cast<size_t>(n);
    }
    return true;
  }

  int fd_ = -1;
};

int Threads() {
  int n = 0;
  if (DIR* d = opendir("/proc/self/task")) {
    while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
    closedir(d);
  }
  return n;
}

double RssMib() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024;
  }
  return -1;
}

class Http2AbuseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = StartServer("127.0.0.1:0", {}, &port_, ServerLimits());
    ASSERT_NE(server_, nullptr);
    channel_ = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials(),
                                         grpc::ChannelArguments());
    ASSERT_TRUE(Served());  // warm: the server's threads are up
  }
  void TearDown() override { server_->Shutdown(std::chrono::system_clock::now()); }

  // A normal client's health check, answered within 2 s.
  bool Served() { return CheckHealth(channel_, "", absl::Seconds(2)).ok(); }

  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  int port_ = 0;
};

TEST_F(Http2AbuseTest, APingFloodGetsGoawayAndTheConnectionClosed) {
  RawHttp2 c(port_);
  ASSERT_TRUE(c.ok());
  for (int i = 0; i < 1000 && c.Ping(); ++i) {
  }
  bool goaway = false, closed = false;
  c.Drain(5000, &goaway, &closed);
  EXPECT_TRUE(goaway) << "too many pings: GOAWAY (ENHANCE_YOUR_CALM)";
  EXPECT_TRUE(closed);
  EXPECT_TRUE(Served());
}

TEST_F(Http2AbuseTest, IdleConnectionsLeaveThreadsAndMemoryBounded) {
  const int threads = Threads();
  const double rss = RssMib();
  std::vector<std::unique_ptr<RawHttp2>> idle;
  for (int i = 0; i < 300; ++i) {
    idle.push_back(std::make_unique<RawHttp2>(port_));
    ASSERT_TRUE(idle.back()->ok()) << "connection " << i;
  }
  EXPECT_TRUE(Served());
  EXPECT_LT(Threads(), threads + 16) << "threads per connection";
  EXPECT_LT(RssMib(), rss + 64) << "memory per idle connection";
}

TEST_F(Http2AbuseTest, RapidResetLeavesTheServerServing) {
  RawHttp2 c(port_);
  ASSERT_TRUE(c.ok());
  const int threads = Threads();
  const double rss = RssMib();
  const auto start = std::chrono::steady_clock::now();
  uint32_t stream = 1;
  for (int i = 0; i < 20000; ++i, stream += 2) {
    if (!c.Headers(stream) || !c.Reset(stream)) break;  // the server may close it: fine
  }
  bool goaway = false, closed = false;
  c.Drain(500, &goaway, &closed);
  EXPECT_TRUE(Served());
  EXPECT_LT(Threads(), threads + 16);
  // The peak is not bounded: gRPC 1.51 (Debian bookworm's) queues every
  // reset stream as a pending call (CVE-2023-44487; gRPC 1.56.3 and later
  // bound them), about 8 KiB each, until its threads have taken them
  // (docs/OPERATIONS.md, "HTTP/2 abuse"). Printed, to watch. What is
  // asserted: none of it stays once they are taken (within seconds), with
  // the connection still open (the allocator keeps freed pages until
  // trimmed).
  const double peak = RssMib();
  const auto taken_by = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (malloc_trim(0), RssMib() >= rss + 32 && std::chrono::steady_clock::now() < taken_by) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  std::printf("rapid reset: %u streams in %.2f s, goaway %d, closed %d; memory %.0f -> %.0f MiB, %.0f MiB after\n",
              (stream - 1) / 2, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
              goaway, closed, rss, peak, RssMib());
  EXPECT_LT(RssMib(), rss + 32) << "memory kept after the reset streams were taken";
}

TEST_F(Http2AbuseTest, OversizedHeadersAreRefused) {
  RawHttp2 c(port_);
  ASSERT_TRUE(c.ok());
  // 64 KiB of one header against a 16 KiB limit (ServerLimits).
  ASSERT_TRUE(c.Headers(1, 64 << 10));
  bool goaway = false, closed = false;
  c.Drain(2000, &goaway, &closed);
  EXPECT_TRUE(goaway || closed) << "the call's headers must be refused";
  EXPECT_TRUE(Served());
}

}  // namespace
}  // namespace moemesh
