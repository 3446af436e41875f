#ifndef MOEMESH_SERVICES_EXPERT_CLIENT_EXPERT_TRANSPORT_H_
#define MOEMESH_SERVICES_EXPERT_CLIENT_EXPERT_TRANSPORT_H_

#include <sys/uio.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "services/common/tensor_proto.h"

namespace grpc {
class Channel;
}

namespace moemesh {
struct ExpertBatch;
namespace v1 {
class DispatchRequest;
class DispatchResponse;
class ShardInfo;
}  // namespace v1

// How a dispatch reaches one expert worker and its answer comes back: one
// connection (or stream) to one worker, answers in the order of requests
// (docs/ARCHITECTURE.md, "The seams"). Today's: the raw TCP data channel
// (FrameTransport) and the gRPC Dispatch stream (GrpcStreamTransport); a
// new wire (shared memory, CUDA IPC, NCCL) is one more class, chosen by
// NegotiateTransport. Not thread-safe: one step at a time.
class ExpertTransport {
 public:
  virtual ~ExpertTransport() = default;

  // Sends `header` (a request whose hidden_states holds the shape, not the
  // bytes) with the rows gathered from `rows`. UNAVAILABLE when the worker
  // is gone.
  virtual absl::Status Send(const v1::DispatchRequest& header, absl::Span<const iovec> rows) = 0;

  // Reads the answer to the oldest request not yet answered. Where the
  // answer carries no error, `*outputs` views its rows until the next
  // Receive. UNAVAILABLE when the worker is gone; INTERNAL for an answer
  // whose rows are malformed.
  virtual absl::Status Receive(v1::DispatchResponse* response, F32Matrix* outputs) = 0;

  // "frames", "grpc-stream" or "cuda-ipc", for logs and metrics.
  virtual absl::string_view name() const = 0;

  // A file descriptor for poll(2) that is readable once the answer to the
  // oldest request is coming (or the connection broke: Receive says how);
  // -1 where the transport cannot tell, or has sent nothing. Hedging
  // (RemoteExpertExecutor::Options::hedge_ms) needs it.
  virtual int answer_fd() const { return -1; }

  // Transports whose rows stay in GPU memory (cuda-ipc): the GPU whose
  // memory SendOnDevice takes, else -1 (and the two calls below are
  // UNIMPLEMENTED).
  virtual int cuda_device() const { return -1; }
  // Sends `header` for `batch`, whose rows (and routing, with
  // routing_on_device) are in that GPU's memory, after the work enqueued on
  // batch.cuda_stream; UNAVAILABLE when the worker is gone.
  virtual absl::Status SendOnDevice(const v1::DispatchRequest& header, const ExpertBatch& batch);
  // Reads the answer to it; where it carries no error, `*outputs` gets the
  // combined rows' shape (no data), and the rows are copied to `out`
  // ([rows, hidden_size], device memory) on `stream` after the worker's
  // work: ordered, not waited for.
  virtual absl::Status ReceiveOnDevice(v1::DispatchResponse* response, F32Matrix* outputs, float* out,
                                       void* stream);
  // Whether ReceiveOnDevice orders the copy after the worker's work on the
  // GPU without reading the worker's answer (cuda-ipc with a counter: the
  // host need not wait a round trip per layer). The answers are then read
  // by Settle, and `*response` of ReceiveOnDevice holds what was expected.
  virtual bool defers_answers() const { return false; }
  // Reads the answers ReceiveOnDevice did not. OK when each said the work
  // was done; else the first failure (the worker's error, INTERNAL for an
  // answer out of step, UNAVAILABLE for a lost worker), after the GPU's
  // waits on the rest were released: the rows copied after them are wrong.
  virtual absl::Status Settle() { return absl::OkStatus(); }
  // Connects (and sets the wire up) now rather than at the first Send, so
  // that a wire that cannot work shows at start-up.
  virtual absl::Status Warm() { return absl::OkStatus(); }

  // Recording, for a step captured into a CUDA graph while its experts are
  // away (cuda-ipc with a counter): between BeginRecording and
  // EndRecording, SendOnDevice and ReceiveOnDevice enqueue only GPU work,
  // which numbers each hop from this transport's base word rather than from
  // constants, and send nothing. For each launch of that graph, ArmReplay
  // sets the numbers up before it and SendReplay sends the recorded
  // requests, numbered afresh, after it (the worker's waits pass at once
  // for rows already there). Whether this transport can (as set up now).
  virtual bool records() const { return false; }
  virtual absl::Status BeginRecording();
  // Ends the recording: with `keep`, its id (unique in the process), else
  // -1 and nothing is kept.
  virtual absl::StatusOr<int64_t> EndRecording(bool keep);
  // FAILED_PRECONDITION where the connection was set up afresh since (the
  // graph names buffers it no longer has) or `id` is not this transport's.
  virtual absl::Status ArmReplay(int64_t id);
  // Sends the armed requests, their step numbers from ++*step; their
  // answers are read by Settle. UNAVAILABLE when the worker is gone: the
  // GPU's waits for its rows are then released (the rows copied after them
  // are wrong, and Settle says so).
  virtual absl::Status SendReplay(uint64_t* step);
  // Where the graph was not launched after ArmReplay.
  virtual void DisarmReplay() {}
  virtual void ForgetRecording(int64_t id) {}
};

// Makes a fresh transport to one worker (after a failure, the old one is
// dropped and a new one made). Connecting may be deferred to the first Send.
using ExpertTransportFactory = std::function<std::unique_ptr<ExpertTransport>()>;

struct TransportOptions {
  int hidden_size = 0;
  // Use the raw data channel where the worker offers one (ShardInfo's
  // data_port on the worker's host); otherwise the gRPC stream.
  bool allow_data_channel = true;
  // A worker silent for longer than this while an answer is awaited
  // (stopped, wedged) is given up, so that the request goes to another
  // replica; 0: wait forever. Both transports.
  int receive_timeout_ms = 0;
  // Where set (CUDA builds, a router on a GPU): wraps the chosen transport
  // into one whose rows stay in GPU memory, for a worker on this host that
  // offers it (ShardInfo.cuda_ipc); the wrapped one carries the messages.
  std::function<ExpertTransportFactory(const v1::ShardInfo&, ExpertTransportFactory)> device_rows;
};

// The transport chosen for a worker: its name (ExpertTransport::name) and
// how to make one.
struct NegotiatedTransport {
  std::string name;
  ExpertTransportFactory make;
};

// Picks how to reach the worker at `address` from what it advertised in
// `info` (GetShardInfo, over `channel`). The gRPC stream is the fallback
// every worker serves.
NegotiatedTransport NegotiateTransport(const std::string& address, const v1::ShardInfo& info,
                                       std::shared_ptr<grpc::Channel> channel, const TransportOptions& options);

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_EXPERT_CLIENT_EXPERT_TRANSPORT_H_
