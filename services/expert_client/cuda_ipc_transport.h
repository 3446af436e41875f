#ifndef MOEMESH_SERVICES_EXPERT_CLIENT_CUDA_IPC_TRANSPORT_H_
#define MOEMESH_SERVICES_EXPERT_CLIENT_CUDA_IPC_TRANSPORT_H_

#include <deque>
#include <functional>
#include <map>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "services/expert_client/expert_transport.h"

namespace moemesh {

class DeviceBuffer;
class IpcEvent;

// The cuda-ipc transport: for a router on a GPU and an expert worker on the
// same host (same GPU or another), the rows never leave GPU memory. The
// worker allocates the connection's buffers and exports them
// (CudaIpcSetup / CudaIpcBuffers, over the wrapped `control` transport);
// per layer the router copies the rows (and the routing) into them on its
// stream, records its event and sends the request; the worker enqueues the
// work after that event and answers. The host sees one small message each
// way per layer, never the rows.
//
// How the router's GPU learns that the worker's rows are written (Sync):
//   - counters (kCounter, where the driver has stream memory operations):
//     the worker's GPU sets a word of the router's memory to the request's
//     number, and the router's GPU waits for it. The router enqueues that
//     wait and the copy out at once, without waiting for the answer, which
//     it reads later (Settle): no host waits a round trip per layer, so the
//     router's host runs ahead of its GPU as in one process;
//     The router's GPU likewise sets a word of the worker's buffers once
//     its rows are copied in, which the worker's GPU waits for. A worker
//     gives a counter to one connection at a time (events to the rest):
//     its sessions share one stream, and two routers that do not wait for
//     answers could each have later layers queued ahead of the other's
//     earlier ones on workers holding different layers;
//   - interprocess events (kGpu, and where the driver lacks stream memory
//     operations kCounter and kAuto): the router records
//     its event before it sends, the worker records its own and answers;
//     the router's GPU waits for that event once the answer is read;
//   - the hosts (kHost): the router waits for its copies before it sends,
//     the worker for its work before it answers.
// Where the worker shares the router's GPU, both processes should be MPS
// clients: without MPS their contexts take turns on the GPU and every hop
// costs a context switch each way (about 0.35 ms on an H100, whatever the
// order; docs/PERFORMANCE.md).
//
// Made by Wrapper (TransportOptions::device_rows). Buffers are set up for
// `initial_tokens` rows and set up afresh, twice as large, when a batch
// needs more (or more routed experts a token). Rows in host memory
// (Send/Receive) go over `control` as they would without it.
class CudaIpcTransport : public ExpertTransport {
 public:
  // How the two processes order their work (above).
  enum class Sync {
    kAuto,     // kCounter (docs/PERFORMANCE.md, "CUDA IPC")
    kGpu,      // interprocess events, each answer read before the GPU waits
    kHost,     // on the hosts
    kCounter,  // counters where the driver has stream memory operations, else events
  };

  // `device`: the router's GPU, whose memory SendOnDevice takes. The
  // buffers are first set up for `initial_tokens` rows of `initial_slots`
  // routed experts.
  CudaIpcTransport(std::unique_ptr<ExpertTransport> control, int device, int hidden_size, int initial_tokens,
                   int initial_slots, Sync sync);
  ~CudaIpcTransport() override;
  // "auto", "counter", "gpu" or "host"; INVALID_ARGUMENT otherwise.
  static absl::StatusOr<Sync> ParseSync(absl::string_view name);

  // TransportOptions::device_rows for a router on GPU `device` whose
  // tokens have `slots` routed experts.
  static std::function<ExpertTransportFactory(const v1::ShardInfo&, ExpertTransportFactory)> Wrapper(
      int device, int slots = 8, int initial_tokens = 256, Sync sync = Sync::kAuto);

  bool host_sync() const { return sync_ == Sync::kHost; }
  // Whether the worker sets this side's counter (negotiated at set-up).
  bool counting() const { return counting_; }

  // The most rows one connection's buffers hold (the worker's bound too).
  static constexpr int kMaxTokens = 1 << 16;
  // With a counter, answers read at the latest once this many are unread.
  static constexpr size_t kMaxOwed = 256;

  absl::Status Send(const v1::DispatchRequest& header, absl::Span<const iovec> rows) override;
  absl::Status Receive(v1::DispatchResponse* response, F32Matrix* outputs) override;
  absl::string_view name() const override { return "cuda-ipc"; }
  int answer_fd() const override { return control_->answer_fd(); }
  int cuda_device() const override { return device_; }
  absl::Status SendOnDevice(const v1::DispatchRequest& header, const ExpertBatch& batch) override;
  absl::Status ReceiveOnDevice(v1::DispatchResponse* response, F32Matrix* outputs, float* out, void* stream) override;
  absl::Status Warm() override;
  bool defers_answers() const override { return counting_; }
  absl::Status Settle() override;
  // With a counter, once set up: recorded hops signal through kernels that
  // read their numbers from a word of device memory (base_), which
  // ArmReplay sets on the stream the graph was captured from, where it must
  // be launched (AwaitWordAsync).
  bool records() const override { return counting_ && shared_ != nullptr; }
  absl::Status BeginRecording() override;
  absl::StatusOr<int64_t> EndRecording(bool keep) override;
  absl::Status ArmReplay(int64_t id) override;
  absl::Status SendReplay(uint64_t* step) override;
  void DisarmReplay() override { armed_ = nullptr; }
  void ForgetRecording(int64_t id) override;

 private:
  struct Shared;
  // Sets the buffers up for at least `tokens` rows of `slots` routes.
  absl::Status SetUp(int tokens, int slots);
  // Lets the mapping go once the work that used it is done; where that
  // does not come (a peer that died mid-wait), the mapping is kept rather
  // than freed under the GPU, and UNAVAILABLE says so.
  absl::Status Unmap();

  // Lets every GPU wait on the counter pass (after a failure).
  void ReleaseCounter();

  std::unique_ptr<ExpertTransport> control_;
  const int device_, hidden_, initial_tokens_, initial_slots_;
  const Sync sync_;
  std::unique_ptr<IpcEvent> router_event_;  // this side's, exported to the worker
  std::unique_ptr<Shared> shared_;          // null until SetUp
  void* last_stream_ = nullptr;             // where the mapping was last used
  // The request awaiting its answer: the answer is checked against it
  // before its rows are copied anywhere.
  uint64_t expect_step_ = 0;
  int expect_layer_ = -1;
  int64_t expect_rows_ = -1;
  // The counter: a word of this side's memory that the worker's GPU sets
  // to each request's CudaIpcRows.done_value (null, and counting_ false,
  // where events order the work).
  std::unique_ptr<DeviceBuffer> counter_;
  bool counting_ = false;
  bool poisoned_ = false;  // waits were released from the host: the worker may still write it
  uint32_t sent_ = 0;    // the last done_value sent
  uint32_t waited_ = 0;  // the last one a GPU wait was enqueued for
  // Requests whose answers are still to be read (counting_), oldest first.
  struct Owed {
    uint64_t step;
    int layer;
    int64_t rows;
  };
  std::deque<Owed> owed_;
  // Recording: the requests of each graph's hops, kept with the set-up
  // they were recorded on (SetUp counts in generation_).
  struct Recording;
  uint64_t generation_ = 0;
  bool recording_ = false;
  std::unique_ptr<Recording> taking_;  // while recording
  std::map<int64_t, std::unique_ptr<Recording>> recordings_;
  // The number before a replay's first hop, in device memory: written on
  // the graph's stream before each launch (a word of host memory polled by
  // a kernel may be read stale from the GPU's cache).
  std::unique_ptr<DeviceBuffer> base_;
  const Recording* armed_ = nullptr;    // ArmReplay's, until SendReplay
  uint32_t armed_base_ = 0;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_EXPERT_CLIENT_CUDA_IPC_TRANSPORT_H_
