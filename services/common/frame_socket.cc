#include "services/common/frame_socket.h"

#include <algorithm>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <google/protobuf/message_lite.h>

#include "absl/strings/str_cat.h"
#include "core/common/tcp_connect.h"

namespace moemesh {
namespace {

constexpr char kMagic[4] = {'M', 'M', 'F', '1'};
constexpr size_t kPrefixBytes = 16;

absl::Status Gone(const char* what) {
  return absl::UnavailableError(absl::StrCat("frame channel: ", what, ": ",
                                             errno ? std::strerror(errno) : "connection closed"));
}

// Reads exactly n bytes.
bool ReadFull(int fd, char* p, size_t n) {
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      if (r == 0) errno = 0;
      return false;
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// Writes every byte of iov[0..n), advancing through partial writes. By
// sendmsg with MSG_NOSIGNAL, so that a peer gone away is an error (and a
// retry on another replica), not a SIGPIPE that kills the process.
bool WriteFull(int fd, std::vector<iovec>& iov) {
  size_t i = 0;
  while (i < iov.size()) {
    msghdr msg{};
    msg.msg_iov = &iov[i];
    msg.msg_iovlen = std::min<size_t>(iov.size() - i, IOV_MAX);
    ssize_t w = sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    size_t left = static_cast<size_t>(w);
    while (i < iov.size() && left >= iov[i].iov_len) left -= iov[i++].iov_len;
    if (left > 0) {
      iov[i].iov_base = static_cast<char*>(iov[i].iov_base) + left;
      iov[i].iov_len -= left;
    }
  }
  return true;
}

void Tune(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

}  // namespace

FrameSocket::FrameSocket(int fd) : fd_(fd) { Tune(fd_); }

FrameSocket::~FrameSocket() {
  if (fd_ >= 0) close(fd_);
}

absl::StatusOr<std::unique_ptr<FrameSocket>> FrameSocket::Connect(const std::string& host, int port) {
  absl::StatusOr<int> fd = TcpConnect(host, port);
  if (!fd.ok()) return absl::UnavailableError(absl::StrCat("frame channel: ", fd.status().message()));
  return std::make_unique<FrameSocket>(*fd);
}

absl::Status FrameSocket::Send(const google::protobuf::MessageLite& header, absl::Span<const iovec> payload) {
  header_buf_.clear();
  header.AppendToString(&header_buf_);
  uint64_t payload_bytes = 0;
  for (const iovec& v : payload) payload_bytes += v.iov_len;
  char prefix[kPrefixBytes];
  std::memcpy(prefix, kMagic, 4);
  const uint32_t hb = static_cast<uint32_t>(header_buf_.size());
  std::memcpy(prefix + 4, &hb, 4);  // little-endian hosts only (x86-64, aarch64)
  std::memcpy(prefix + 8, &payload_bytes, 8);
  std::vector<iovec> iov;
  iov.reserve(payload.size() + 2);
  iov.push_back({prefix, kPrefixBytes});
  iov.push_back({header_buf_.data(), header_buf_.size()});
  iov.insert(iov.end(), payload.begin(), payload.end());
  errno = 0;
  if (!WriteFull(fd_, iov)) return Gone("send");
  return absl::OkStatus();
}

namespace {

// Reads `n` bytes into `buf` (resized to n), growing it past its old size
// by at most the bytes read so far (at least 1 MiB) at a time. Memory a
// buffer already has is reused without being cleared.
template <typename Buffer>
bool ReadGrowing(int fd, uint64_t n, Buffer* buf) {
  if (buf->size() > n) buf->resize(n);
  uint64_t have = 0;
  while (have < n) {
    const uint64_t want = std::min<uint64_t>(n - have, std::max<uint64_t>(uint64_t{1} << 20, have));
    if (buf->size() < have + want) buf->resize(static_cast<size_t>(have + want));
    if (!ReadFull(fd, buf->data() + have, static_cast<size_t>(want))) return false;
    have += want;
  }
  return true;
}

}  // namespace

void FrameSocket::SetReceiveTimeout(int ms) {
  receive_timeout_ms_ = ms;
  timeval tv{ms / 1000, (ms % 1000) * 1000};
  setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

absl::Status FrameSocket::Receive(google::protobuf::MessageLite* header, std::vector<char>* payload) {
  uint64_t bytes = 0;
  absl::Status st = ReceiveHeader(header, &bytes);
  if (st.ok() && !ReadGrowing(fd_, bytes, payload)) st = Gone("receive");
  return TimedOut(st);
}

absl::Status FrameSocket::Receive(google::protobuf::MessageLite* header, std::string* payload) {
  uint64_t bytes = 0;
  absl::Status st = ReceiveHeader(header, &bytes);
  if (st.ok() && !ReadGrowing(fd_, bytes, payload)) st = Gone("receive");
  return TimedOut(st);
}

absl::Status FrameSocket::TimedOut(absl::Status st) const {
  if (!st.ok() && receive_timeout_ms_ > 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
    return absl::UnavailableError(absl::StrCat("frame channel: no answer within ", receive_timeout_ms_, " ms"));
  }
  return st;
}

absl::Status FrameSocket::ReceiveHeader(google::protobuf::MessageLite* header, uint64_t* payload_bytes) {
  char prefix[kPrefixBytes];
  errno = 0;
  if (!ReadFull(fd_, prefix, kPrefixBytes)) return Gone("receive");
  if (std::memcmp(prefix, kMagic, 4) != 0) return absl::DataLossError("frame channel: bad frame magic");
  uint32_t hb;
  uint64_t pb;
  std::memcpy(&hb, prefix + 4, 4);
  std::memcpy(&pb, prefix + 8, 8);
  if (hb > (64u << 20) || pb > kMaxPayloadBytes) {
    return absl::DataLossError(absl::StrCat("frame channel: frame too large (", hb, " + ", pb, " bytes)"));
  }
  // Buffers grow as bytes arrive, not to what a peer announces: a 16-byte
  // prefix cannot make this process allocate half a gigabyte.
  if (!ReadGrowing(fd_, hb, &header_buf_)) return Gone("receive");
  if (!header->ParseFromString(header_buf_)) return absl::DataLossError("frame channel: bad frame header");
  *payload_bytes = pb;
  return absl::OkStatus();
}

void FrameSocket::Shutdown() { shutdown(fd_, SHUT_RDWR); }

absl::StatusOr<std::unique_ptr<FrameServer>> FrameServer::Start(const std::string& host, int port,
                                                               std::function<void(FrameSocket*)> serve) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res); rc != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cannot resolve ", host, ": ", gai_strerror(rc)));
  }
  int fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, res->ai_protocol);
  int one = 1;
  if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  bool ok = fd >= 0 && bind(fd, res->ai_addr, res->ai_addrlen) == 0 && listen(fd, 64) == 0;
  freeaddrinfo(res);
  if (!ok) {
    std::string err = std::strerror(errno);
    if (fd >= 0) close(fd);
    return absl::UnavailableError(absl::StrCat("cannot listen on ", host, ":", port, ": ", err));
  }
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  std::unique_ptr<FrameServer> s(new FrameServer);
  s->listen_fd_ = fd;
  s->port_ = ntohs(addr.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port
                                              : reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  s->serve_ = std::move(serve);
  s->acceptor_ = std::thread([p = s.get()] { p->AcceptLoop(); });
  return s;
}

void FrameServer::AcceptLoop() {
  while (!stopping_) {
    pollfd pfd{listen_fd_, POLLIN, 0};
    if (poll(&pfd, 1, 100) <= 0) continue;  // wakes up to see stopping_
    int c = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    std::lock_guard<std::mutex> l(mu_);
    // Reap the connections whose peers have left.
    for (auto it = connections_.begin(); it != connections_.end();) {
      if ((*it)->done) {
        (*it)->thread.join();
        it = connections_.erase(it);
      } else {
        ++it;
      }
    }
    auto conn = std::make_unique<Connection>();
    conn->socket = std::make_unique<FrameSocket>(c);
    Connection* raw = conn.get();
    conn->thread = std::thread([this, raw] {
      serve_(raw->socket.get());
      raw->done = true;
    });
    connections_.push_back(std::move(conn));
  }
}

void FrameServer::Stop() {
  if (stopping_.exchange(true)) return;
  if (acceptor_.joinable()) acceptor_.join();
  close(listen_fd_);
  std::lock_guard<std::mutex> l(mu_);
  for (auto& c : connections_) c->socket->Shutdown();
  for (auto& c : connections_) c->thread.join();
  connections_.clear();
}

FrameServer::~FrameServer() { Stop(); }

std::string DataChannelHost(const std::string& address) {
  // Targets with a scheme name no TCP host (unix:PATH may even end in digits).
  for (const char* scheme : {"unix:", "unix-abstract:", "vsock:", "dns:", "ipv4:", "ipv6:"}) {
    if (address.rfind(scheme, 0) == 0) return "";
  }
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return "";
  std::string host = address.substr(0, colon);
  const std::string port = address.substr(colon + 1);
  if (port.empty() || port.find_first_not_of("0123456789") != std::string::npos) return "";
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);  // an IPv6 literal
  } else if (host.find(':') != std::string::npos) {
    return "";  // a scheme
  }
  return host.find('/') == std::string::npos ? host : "";
}

}  // namespace moemesh
