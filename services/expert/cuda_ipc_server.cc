#include "services/expert/cuda_ipc_server.h"

#include <atomic>
#include <cstdint>
#include <deque>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/common/status_macros.h"
#include "core/experts/expert_executor.h"
#include "core/experts/expert_work.h"
#include "core/kernels/cuda/cuda_ipc.h"
#include "core/kernels/cuda/cuda_runtime_util.h"
#include "moemesh/v1/expert.pb.h"
#include "services/expert/expert_worker.h"

namespace moemesh {
namespace {

// Bounds on what one router may ask a worker to allocate (the router's
// CudaIpcTransport::kMaxTokens).
constexpr int kMaxTokens = 1 << 16;
// A connection's buffers and events outlive it by this long: the router may
// still have copies into them, or a wait on the worker's event, enqueued
// when it learns that the connection is gone; freeing them at once would
// free memory under its GPU.
constexpr absl::Duration kRetiredFor = absl::Seconds(30);
constexpr int kMaxSlots = 64;

size_t Align(size_t bytes) { return (bytes + 255) & ~size_t{255}; }

class CudaIpcServer : public DeviceRowsServer {
 public:
  CudaIpcServer(ExpertWorker* worker, std::unique_ptr<OwnedStream> stream)
      : worker_(worker), stream_(std::move(stream)) {}

  absl::StatusOr<std::unique_ptr<Session>> Open(const v1::CudaIpcSetup& setup, v1::CudaIpcBuffers* buffers) override;
  int device() const override { return worker_->cuda_device(); }
  std::string device_uuid() const override { return CudaDeviceUuid(device()); }

 private:
  class IpcSession;
  // What a closed session leaves, freed after kRetiredFor.
  struct Retired {
    absl::Time until;
    std::unique_ptr<DeviceBuffer> memory;
    std::unique_ptr<IpcEvent> router_event, worker_event;
    std::unique_ptr<IpcMemory> counter;
  };
  void Retire(Retired r) {
    absl::MutexLock lock(&retired_mu_);
    const absl::Time now = absl::Now();
    while (!retired_.empty() && retired_.front().until <= now) retired_.pop_front();
    retired_.push_back(std::move(r));
  }

  ExpertWorker* worker_;
  std::unique_ptr<OwnedStream> stream_;
  absl::Mutex mu_;  // one session's wait, work and record at a time
  std::atomic<int> counter_sessions_{0};  // sessions that use a router's counter (at most one)
  absl::Mutex retired_mu_;
  std::deque<Retired> retired_ ABSL_GUARDED_BY(retired_mu_);
};

class CudaIpcServer::IpcSession : public DeviceRowsServer::Session {
 public:
  IpcSession(CudaIpcServer* server, std::unique_ptr<DeviceBuffer> memory, const v1::CudaIpcBuffers& layout,
             std::unique_ptr<IpcEvent> router_event, std::unique_ptr<IpcEvent> worker_event,
             std::unique_ptr<IpcMemory> counter)
      : server_(server),
        memory_(std::move(memory)),
        layout_(layout),
        router_event_(std::move(router_event)),
        worker_event_(std::move(worker_event)),
        counter_(std::move(counter)) {}
  ~IpcSession() override {
    if (counter_) --server_->counter_sessions_;
    // A router gone before its GPU set the ready word for work enqueued
    // here: release this stream's wait, or every session's work stalls.
    if (counter_ && waited_ready_ != 0) {
      WriteValueNow(memory_->as<char>() + layout_.ready_offset(), waited_ready_).IgnoreError();
    }
    // The counter's mapping too: writes to it may still be enqueued.
    server_->Retire({absl::Now() + kRetiredFor, std::move(memory_), std::move(router_event_), std::move(worker_event_),
                     std::move(counter_)});
  }

  absl::Status Run(const v1::DispatchRequest& request, v1::DispatchResponse* response) override {
    absl::MutexLock lock(&server_->mu_);
    MM_RETURN_IF_ERROR(CudaSetDevice(server_->device()));
    CudaStream stream = server_->stream_->get();
    absl::Status st = Enqueue(request, stream);
    const uint32_t done = counter_ ? request.ipc().done_value() : 0;
    if (done != 0) {
      // Failed work too: the router's GPU waits for the word, and the
      // answer says what went wrong.
      const absl::Status written = StreamWriteValue(stream, counter_->data(), done);
      if (st.ok()) st = written;
    } else if (st.ok()) {
      st = worker_event_->Record(stream);
      if (st.ok() && request.ipc().host_sync()) st = CudaSynchronize(stream);
    }
    MM_RETURN_IF_ERROR(st);
    response->set_combined_rows(request.hidden_states().shape(0));
    return absl::OkStatus();
  }

 private:
  // Checks the request and enqueues its work on `stream` after the
  // router's copies.
  absl::Status Enqueue(const v1::DispatchRequest& request, CudaStream stream) {
    ExpertWorker& worker = *server_->worker_;
    const int h = worker.config().hidden_size;
    const v1::Tensor& t = request.hidden_states();
    if (t.dtype() != v1::DTYPE_F32 || t.shape_size() != 2 || t.shape(1) != h || t.shape(0) < 0 ||
        t.shape(0) > layout_.max_tokens()) {
      return absl::InvalidArgumentError(absl::StrCat("CUDA IPC rows must be F32 [rows <= ", layout_.max_tokens(),
                                                     ", ", h, "]; set the connection up larger first"));
    }
    const int n = static_cast<int>(t.shape(0)), slots = request.ipc().slots();
    if (slots < 0 || slots > layout_.max_slots()) {
      return absl::InvalidArgumentError(
          absl::StrCat("CUDA IPC routing of ", slots, " slots; the connection holds ", layout_.max_slots()));
    }
    if (slots > 0 && request.groups_size() > 0) {
      return absl::InvalidArgumentError("CUDA IPC work with routing in the buffers and groups in the request");
    }
    char* base = memory_->as<char>();
    const float* hidden = reinterpret_cast<const float*>(base + layout_.hidden_offset());
    float* out = reinterpret_cast<float*>(base + layout_.out_offset());
    // After the router's copies: its ready word, or its event (with
    // host_sync they are done already).
    if (counter_ && request.ipc().done_value() != 0) {
      MM_RETURN_IF_ERROR(StreamWaitValue(stream, base + layout_.ready_offset(), request.ipc().done_value()));
      waited_ready_ = request.ipc().done_value();
    } else if (!request.ipc().host_sync()) {
      MM_RETURN_IF_ERROR(router_event_->WaitOn(stream));
    }
    if (slots > 0) {
      ExpertBatch batch{request.layer(), n, h, hidden, slots,
                        reinterpret_cast<const int*>(base + layout_.ids_offset()),
                        reinterpret_cast<const float*>(base + layout_.weights_offset())};
      batch.on_device = batch.routing_on_device = true;
      batch.cuda_stream = stream;
      return worker.RunRoutedOnDevice(batch, out);
    }
    ExpertWork work;
    work.layer = request.layer();
    work.num_rows = n;
    work.hidden_size = h;
    work.hidden_states = hidden;
    work.on_device = true;
    work.cuda_stream = stream;
    work.groups.reserve(request.groups_size());
    for (const v1::ExpertRows& g : request.groups()) {
      work.groups.push_back({g.expert(), {g.rows().begin(), g.rows().end()}, {g.weights().begin(), g.weights().end()}});
    }
    return worker.RunCombinedOnDevice(work, out);
  }

  CudaIpcServer* server_;
  std::unique_ptr<DeviceBuffer> memory_;
  v1::CudaIpcBuffers layout_;
  std::unique_ptr<IpcEvent> router_event_, worker_event_;
  std::unique_ptr<IpcMemory> counter_;  // the router's word (CudaIpcSetup.router_counter), or null
  uint32_t waited_ready_ = 0;           // the last ready value this stream waits for
};

absl::StatusOr<std::unique_ptr<DeviceRowsServer::Session>> CudaIpcServer::Open(const v1::CudaIpcSetup& setup,
                                                                                v1::CudaIpcBuffers* buffers) {
  if (setup.max_tokens() < 1 || setup.max_tokens() > kMaxTokens || setup.max_slots() < 0 ||
      setup.max_slots() > kMaxSlots) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA IPC setup for ", setup.max_tokens(), " tokens of ",
                                                   setup.max_slots(), " slots; at most ", kMaxTokens, " and ",
                                                   kMaxSlots));
  }
  const size_t tokens = setup.max_tokens(), rows = Align(tokens * worker_->config().hidden_size * sizeof(float)),
               routes = Align(tokens * setup.max_slots() * sizeof(int32_t));
  v1::CudaIpcBuffers layout;
  layout.set_hidden_offset(0);
  layout.set_ids_offset(rows);
  layout.set_weights_offset(rows + routes);
  layout.set_out_offset(rows + 2 * routes);
  layout.set_max_tokens(setup.max_tokens());
  layout.set_max_slots(setup.max_slots());
  MM_RETURN_IF_ERROR(CudaSetDevice(device()));
  MM_ASSIGN_OR_RETURN(std::unique_ptr<IpcEvent> router_event, IpcEvent::Open(setup.router_event()));
  MM_ASSIGN_OR_RETURN(std::unique_ptr<IpcEvent> worker_event, IpcEvent::Create());
  // The rows, the routing, the combined rows, and the ready word.
  layout.set_ready_offset(2 * rows + 2 * routes);
  MM_ASSIGN_OR_RETURN(std::unique_ptr<DeviceBuffer> memory, DeviceBuffer::Allocate(2 * rows + 2 * routes + 256));
  MM_RETURN_IF_ERROR(memory->Fill(0));
  MM_ASSIGN_OR_RETURN(std::string handle, ExportDeviceMemory(*memory));
  MM_ASSIGN_OR_RETURN(std::string event_handle, worker_event->Export());
  layout.set_memory(std::move(handle));
  layout.set_worker_event(std::move(event_handle));
  // The router's counter where both sides can use one, for one session
  // at a time; else events. The sessions share this worker's stream, and a
  // router that does not wait for answers may have later layers queued
  // there ahead of another router's earlier ones: two such routers over
  // workers holding different layers could each wait on the other.
  std::unique_ptr<IpcMemory> counter;
  int none = 0;
  if (!setup.router_counter().empty() && StreamMemOpsSupported(device()) &&
      counter_sessions_.compare_exchange_strong(none, 1)) {
    auto opened = IpcMemory::Open(setup.router_counter());
    if (opened.ok()) {
      counter = std::move(*opened);  // the session gives its place back when it ends
    } else {
      counter_sessions_ = 0;
    }
  }
  layout.set_counter(counter != nullptr);
  *buffers = layout;
  return std::make_unique<IpcSession>(this, std::move(memory), layout, std::move(router_event),
                                      std::move(worker_event), std::move(counter));
}

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceRowsServer>> MakeCudaIpcServer(ExpertWorker* worker) {
  if (worker->cuda_device() < 0 || !worker->groups_on_device()) {
    return absl::FailedPreconditionError("CUDA IPC needs the experts on a GPU, whole layers of them");
  }
  MM_RETURN_IF_ERROR(CudaSetDevice(worker->cuda_device()));
  MM_ASSIGN_OR_RETURN(std::unique_ptr<OwnedStream> stream, OwnedStream::Create());
  return std::make_unique<CudaIpcServer>(worker, std::move(stream));
}

}  // namespace moemesh
