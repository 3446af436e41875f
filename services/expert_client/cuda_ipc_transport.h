#ifndef MOEMESH_SERVICES_EXPERT_CLIENT_CUDA_IPC_TRANSPORT_H_
#define MOEMESH_SERVICES_EXPERT_CLIENT_CUDA_IPC_TRANSPORT_H_

#include <functional>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "services/expert_client/expert_transport.h"

namespace moemesh {

class IpcEvent;

// The cuda-ipc transport: for a router on a GPU and an expert worker on the
// same host (same GPU or another), the rows never leave GPU memory. The
// worker allocates the connection's buffers and exports them
// (CudaIpcSetup / CudaIpcBuffers, over the wrapped `control` transport);
// per layer the router copies the rows (and the routing) into them on its
// stream, records its event and sends the request; the worker enqueues the
// work after that event, records its own and answers at once; the router's
// stream waits for that event and copies the combined rows out. The host
// sees one small message each way per layer, never the rows, and neither
// side waits for the GPU.
//
// Where the worker shares the router's GPU that is slow: without MPS the
// two processes' contexts take turns on the GPU, and a stream of one that
// waits on the other's event costs a context switch (about 0.3 ms a hop on
// an H100). There the transport synchronizes on the hosts instead
// (CudaIpcRows.host_sync): the router waits for its copies before it sends,
// the worker for its work before it answers. Sync::kAuto picks that by the
// GPUs' UUIDs.
//
// Made by Wrapper (TransportOptions::device_rows). Buffers are set up for
// `initial_tokens` rows and set up afresh, twice as large, when a batch
// needs more (or more routed experts a token). Rows in host memory (Send/Receive) go over `control` as
// they would without it.
class CudaIpcTransport : public ExpertTransport {
 public:
  // `device`: the router's GPU, whose memory SendOnDevice takes. The
  // buffers are first set up for `initial_tokens` rows of `initial_slots`
  // routed experts.
  // `host_sync`: CudaIpcRows.host_sync on every request.
  CudaIpcTransport(std::unique_ptr<ExpertTransport> control, int device, int hidden_size, int initial_tokens,
                   int initial_slots, bool host_sync);
  ~CudaIpcTransport() override;

  // How the two processes order their work on the GPU.
  enum class Sync {
    kAuto,  // on the hosts where the worker is on the router's GPU, else on the GPUs
    kGpu,   // interprocess events only (the host never waits)
    kHost,  // on the hosts
  };
  // "auto", "gpu" or "host"; INVALID_ARGUMENT otherwise.
  static absl::StatusOr<Sync> ParseSync(absl::string_view name);

  // TransportOptions::device_rows for a router on GPU `device` whose
  // tokens have `slots` routed experts.
  static std::function<ExpertTransportFactory(const v1::ShardInfo&, ExpertTransportFactory)> Wrapper(
      int device, int slots = 8, int initial_tokens = 256, Sync sync = Sync::kAuto);

  bool host_sync() const { return host_sync_; }

  // The most rows one connection's buffers hold (the worker's bound too).
  static constexpr int kMaxTokens = 1 << 16;

  absl::Status Send(const v1::DispatchRequest& header, absl::Span<const iovec> rows) override;
  absl::Status Receive(v1::DispatchResponse* response, F32Matrix* outputs) override;
  absl::string_view name() const override { return "cuda-ipc"; }
  int answer_fd() const override { return control_->answer_fd(); }
  int cuda_device() const override { return device_; }
  absl::Status SendOnDevice(const v1::DispatchRequest& header, const ExpertBatch& batch) override;
  absl::Status ReceiveOnDevice(v1::DispatchResponse* response, F32Matrix* outputs, float* out, void* stream) override;
  absl::Status Warm() override;

 private:
  struct Shared;
  // Sets the buffers up for at least `tokens` rows of `slots` routes.
  absl::Status SetUp(int tokens, int slots);
  // Lets the mapping go once the work that used it is done; where that
  // does not come (a peer that died mid-wait), the mapping is kept rather
  // than freed under the GPU, and UNAVAILABLE says so.
  absl::Status Unmap();

  std::unique_ptr<ExpertTransport> control_;
  const int device_, hidden_, initial_tokens_, initial_slots_;
  const bool host_sync_;
  std::unique_ptr<IpcEvent> router_event_;  // this side's, exported to the worker
  std::unique_ptr<Shared> shared_;          // null until SetUp
  void* last_stream_ = nullptr;             // where the mapping was last used
  // The request awaiting its answer: the answer is checked against it
  // before its rows are copied anywhere.
  uint64_t expect_step_ = 0;
  int expect_layer_ = -1;
  int64_t expect_rows_ = -1;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_EXPERT_CLIENT_CUDA_IPC_TRANSPORT_H_
