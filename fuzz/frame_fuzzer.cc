// libFuzzer target for the raw data channel's frame parser: the input is
// what a peer sends (FrameSocket over a socket pair), read frame by frame
// into a DispatchRequest as an expert worker reads it, until an error or
// the end. Errors are expected; a crash, sanitizer report, hang or an
// allocation past what arrived is a bug. Build: `make fuzz`.
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <vector>

#include "moemesh/v1/expert.pb.h"
#include "services/common/frame_socket.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) return 0;
  // Inputs are at most -max_len (4096) bytes: they fit in the socket's buffer.
  size_t sent = 0;
  while (sent < size) {
    const ssize_t n = write(fds[1], data + sent, size - sent);
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  close(fds[1]);
  moemesh::FrameSocket socket(fds[0]);  // closes fds[0]
  moemesh::v1::DispatchRequest request;
  std::vector<char> payload;
  while (socket.Receive(&request, &payload).ok()) {
  }
  return 0;
}
