#ifndef MOEMESH_SERVICES_COMMON_FRAME_SOCKET_H_
#define MOEMESH_SERVICES_COMMON_FRAME_SOCKET_H_

#include <sys/uio.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace google::protobuf {
class MessageLite;
}

namespace moemesh {

// The raw data channel of the expert hop, negotiated over gRPC (the worker
// advertises its port in ShardInfo): a TCP connection carrying frames of a
// protobuf header followed by raw payload bytes, written with one writev
// straight from the caller's buffers and read into a reused buffer. It
// exists because a gRPC stream costs several times a plain TCP round trip
// (docs/PERFORMANCE.md); the header keeps the schema of expert.proto.
//
// Frame: "MMF1", u32 header bytes, u64 payload bytes (little-endian), the
// header, the payload. Not thread-safe: one user at a time.
class FrameSocket {
 public:
  // Connects to host:port. UNAVAILABLE when it cannot.
  static absl::StatusOr<std::unique_ptr<FrameSocket>> Connect(const std::string& host, int port);
  explicit FrameSocket(int fd);  // takes a connected socket
  ~FrameSocket();

  // Sends `header` and then every payload piece. UNAVAILABLE when the peer
  // is gone.
  absl::Status Send(const google::protobuf::MessageLite& header, absl::Span<const iovec> payload);
  // Receives one frame into `header` and `*payload` (resized). UNAVAILABLE
  // when the peer is gone; DATA_LOSS for a malformed frame.
  absl::Status Receive(google::protobuf::MessageLite* header, std::vector<char>* payload);
  // The same into a string (which a caller may then keep without a copy).
  absl::Status Receive(google::protobuf::MessageLite* header, std::string* payload);
  // Makes a blocked Receive return (from another thread).
  void Shutdown();
  // Bounds how long Receive waits for the peer's next bytes (0: forever): a
  // peer silent for longer (stopped, wedged) makes it UNAVAILABLE, "no
  // answer within N ms".
  void SetReceiveTimeout(int ms);
  // The socket, for poll(2) alone (readable: a frame is coming, or the
  // peer left); Receive reads no further ahead than one frame.
  int pollable_fd() const { return fd_; }

  // Larger frames are refused (DATA_LOSS) before anything is allocated;
  // the same bound as gRPC messages (kMaxMessageBytes).
  static constexpr uint64_t kMaxPayloadBytes = uint64_t{512} << 20;

 private:
  // Reads a frame's prefix and header; its payload's size to `payload_bytes`.
  absl::Status ReceiveHeader(google::protobuf::MessageLite* header, uint64_t* payload_bytes);
  // `st`, or UNAVAILABLE "no answer within N ms" where a receive timed out.
  absl::Status TimedOut(absl::Status st) const;
  int fd_;
  int receive_timeout_ms_ = 0;
  std::string header_buf_;
};

// The host of a gRPC target that is a plain HOST:PORT or [V6]:PORT, where
// a service's data channel is (at the port it advertises); empty for other
// target forms (unix:, dns:, ipv4: ...), which keep to gRPC.
std::string DataChannelHost(const std::string& grpc_address);

// Accepts frame connections on a port and runs `serve` on a thread per
// connection until the peer leaves or Stop is called. Thread-safe.
class FrameServer {
 public:
  // Listens on host:port (port 0 picks a free one).
  static absl::StatusOr<std::unique_ptr<FrameServer>> Start(const std::string& host, int port,
                                                           std::function<void(FrameSocket*)> serve);
  ~FrameServer();  // Stop()

  int port() const { return port_; }
  // Stops accepting, shuts every connection down and joins their threads.
  void Stop();

 private:
  FrameServer() = default;
  void AcceptLoop();

  int listen_fd_ = -1;
  int port_ = 0;
  std::function<void(FrameSocket*)> serve_;
  std::atomic<bool> stopping_{false};
  std::thread acceptor_;
  std::mutex mu_;
  struct Connection {
    std::unique_ptr<FrameSocket> socket;
    std::thread thread;
    std::atomic<bool> done{false};
  };
  std::vector<std::unique_ptr<Connection>> connections_;  // guarded by mu_
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_COMMON_FRAME_SOCKET_H_
