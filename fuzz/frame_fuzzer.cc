// libFuzzer target for the raw data channel's frame parser: the input is
// what a peer sends (FrameSocket over a socket pair), read frame by frame
// into a DispatchRequest as an expert worker reads it, and its rows widened
// to f32 as the worker does (F32, BF16, or FP8 with the header's scales),
// until an error or the end. Errors are expected; a crash, sanitizer report,
// hang or an allocation past what arrived is a bug. Build: `make fuzz`.
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <vector>

#include "moemesh/v1/expert.pb.h"
#include "services/common/frame_socket.h"
#include "services/common/tensor_proto.h"

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
  std::vector<float> widened;
  while (socket.Receive(&request, &payload).ok()) {
    (void)moemesh::GetRowsAsF32(request.hidden_states(), payload.data(), payload.size(), /*want_cols=*/-1, "rows",
                                request.hidden_scales(), &widened);
  }
  return 0;
}
