#ifndef MOEMESH_CORE_EXPERTS_EXPERT_EXECUTOR_H_
#define MOEMESH_CORE_EXPERTS_EXPERT_EXECUTOR_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"

namespace moemesh {

// The routed rows of one MoE layer: token t goes to experts
// expert_ids[t * slots + j] with weights weights[t * slots + j]; id -1
// marks an unused slot. The routing is in host memory; the hidden states,
// and the output Execute writes, in host memory or on a GPU (`on_device`).
struct ExpertBatch {
  int layer = 0;
  int num_tokens = 0;
  int hidden_size = 0;
  const float* hidden_states = nullptr;  // [num_tokens, hidden_size]
  int slots = 0;
  const int* expert_ids = nullptr;       // [num_tokens, slots], host memory
  const float* weights = nullptr;        // [num_tokens, slots], host memory
  // Whether `hidden_states` and Execute's `out` are device pointers on the
  // executor's cuda_device(); work on them is then ordered on `cuda_stream`
  // (a cudaStream_t; null is the default stream), and Execute may return
  // before it is done.
  bool on_device = false;
  void* cuda_stream = nullptr;
  // Whether `expert_ids` and `weights` are device pointers too (with
  // on_device, for executors whose groups_on_device() is true): the
  // executor then groups the rows on the GPU, and nothing waits on the host.
  bool routing_on_device = false;
};

// The seam between the model and its routed experts: the forward pass calls
// it once per MoE layer per step. Implementations run the experts in this
// process (LocalExpertExecutor, on the CPU or a GPU) or on remote expert
// workers (RemoteExpertExecutor, services/expert_client/). See
// docs/ARCHITECTURE.md, "The seams".
class ExpertExecutor {
 public:
  virtual ~ExpertExecutor() = default;
  // Writes out[t] = sum_j weights[t, j] * FFN_{expert_ids[t, j]}(x_t),
  // adding the experts of a token in increasing id order (so every
  // executor gives the same sums for the same rows). `out` is
  // [num_tokens, hidden_size] and is overwritten. Not required to be
  // thread-safe; the engine calls it from one thread.
  virtual absl::Status Execute(const ExpertBatch& batch, float* out) = 0;

  // The GPU whose memory Execute accepts (ExpertBatch::on_device), or -1:
  // host memory only. A forward pass on that GPU hands its rows over in
  // place; others copy them to the host and back.
  virtual int cuda_device() const { return -1; }
  // Whether Execute also takes the routing in that GPU's memory
  // (ExpertBatch::routing_on_device) for batches of up to
  // kMaxDeviceGroupedRoutes routes (core/kernels/cpu/gating_rule.h).
  virtual bool groups_on_device() const { return false; }
  // Whether an Execute of rows and routing on the device enqueues only GPU
  // work, so that a forward pass may capture it into a CUDA graph and
  // replay it. Executors that talk to another process per call do not.
  virtual bool capturable() const { return true; }
  // What moves this executor's results away from exact f32 products on the
  // checkpoint's weights (experts on a GPU, quantized or fed bf16 inputs by
  // their workers, rows or answers rounded on a wire), or empty where
  // nothing does; engines name their KV blocks by it (CacheLayout::extra),
  // so that caches computed differently share no blocks.
  virtual std::string ResultsTag() const { return ""; }

  // Pipelining, for executors whose experts are away (remote workers):
  // Start hands `batch` over and returns; Finish(lane) waits for it and
  // writes the sums to the `out` given to Start. Up to lanes() batches may
  // be away at once, one per lane in [0, lanes()), and are finished in the
  // order they were started; their buffers (rows, routing, `out`) stay as
  // they are until then. So a forward pass runs one micro-batch's
  // attention while another's experts are away (docs/ARCHITECTURE.md,
  // "Micro-batch ping-pong"). By default Start runs Execute and Finish has
  // nothing left to do.
  virtual int lanes() const { return 1; }
  virtual absl::Status Start(const ExpertBatch& batch, float* out, int lane) { return Execute(batch, out); }
  virtual absl::Status Finish(int lane) { return absl::OkStatus(); }
  // Where Finish of rows on a GPU returns before the workers have answered
  // (their work ordered on the GPU: the cuda-ipc transport's counter), reads
  // those answers. A forward pass calls it before it uses a step's results.
  // ABORTED: a worker failed work whose rows were already used, so the
  // step's results are wrong and it must run again (that replica is passed
  // over from now on).
  virtual absl::Status Settle() { return absl::OkStatus(); }

  // Graphs of steps whose experts are away (not capturable(): cuda-ipc
  // with a counter), where the executor can keep its messages apart from
  // its GPU work. A forward pass captures a step between BeginRecording and
  // EndRecording: Start and Finish of rows and routing on the device then
  // enqueue only GPU work (into the graph) and send nothing. Replay(id,
  // launch) sets that recording's numbers up, calls `launch` (the graph's),
  // and then sends the recording's messages, so the workers queue a step's
  // work while its first layer runs, and neither host stands between the
  // GPUs. Their answers are read by Settle, as for any step (ABORTED where
  // a worker was lost meanwhile). Whether this executor can, now.
  virtual bool replays() const { return false; }
  virtual absl::Status BeginRecording() { return absl::UnimplementedError("this executor does not record"); }
  // With `keep`, the recording's id for Replay; else it is dropped (the
  // capture failed) and -1 returned.
  virtual absl::Status EndRecording(bool keep, int64_t* id) {
    return absl::UnimplementedError("this executor does not record");
  }
  // FAILED_PRECONDITION where the connections it recorded changed since (a
  // failed replica, a larger set-up): the graph is stale, and the step
  // must run as usual. Nothing is sent where this, or `launch`, fails.
  virtual absl::Status Replay(int64_t id, const std::function<absl::Status()>& launch) {
    return absl::UnimplementedError("this executor does not record");
  }
  virtual void ForgetRecording(int64_t id) {}
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_EXPERTS_EXPERT_EXECUTOR_H_
