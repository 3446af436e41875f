#include "services/expert_client/cuda_ipc_transport.h"

#include <algorithm>
#include <atomic>
#include <limits>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/experts/expert_executor.h"
#include "core/kernels/cuda/cuda_ipc.h"
#include "core/kernels/cuda/cuda_runtime_util.h"
#include "moemesh/v1/expert.pb.h"

namespace moemesh {

// The connection's buffers, mapped from the worker, and the two events.
struct CudaIpcTransport::Shared {
  std::unique_ptr<IpcEvent> worker_event;
  std::unique_ptr<IpcMemory> memory;
  v1::CudaIpcBuffers layout;

  char* at(uint64_t offset) const { return static_cast<char*>(memory->data()) + offset; }
};

// A recorded graph's hops: their requests, numbered at each replay.
struct CudaIpcTransport::Recording {
  uint64_t generation = 0;
  CudaStream stream = nullptr;  // captured from, launched on
  std::vector<v1::DispatchRequest> requests;
};

namespace {
std::atomic<int64_t> next_recording{0};
}  // namespace

CudaIpcTransport::CudaIpcTransport(std::unique_ptr<ExpertTransport> control, int device, int hidden_size,
                                   int initial_tokens, int initial_slots, Sync sync)
    : control_(std::move(control)),
      device_(device),
      hidden_(hidden_size),
      initial_tokens_(std::clamp(initial_tokens, 1, kMaxTokens)),
      initial_slots_(std::max(0, initial_slots)),
      sync_(sync) {}

CudaIpcTransport::~CudaIpcTransport() {
  // Answers unread or waits not enqueued: the worker may still set the
  // counter (or never will): the GPU's waits are released, and the word is
  // kept rather than freed under the worker (256 bytes; a failed replica).
  const bool unsettled = !owed_.empty() || waited_ != sent_;
  if (unsettled) ReleaseCounter();
  const bool unmapped = Unmap().ok();
  if (counter_ && (unsettled || poisoned_ || !unmapped)) (void)counter_.release();
  if (!unmapped) (void)base_.release();  // a graph's kernels may still read it
  // The worker may still have a wait on this event enqueued (a request
  // given up on before it ran): it outlives the connection. Rare (a failed
  // replica) and 64 bytes of driver state.
  (void)router_event_.release();
}

absl::Status CudaIpcTransport::Unmap() {
  if (!shared_) return absl::OkStatus();
  if (!WaitForStream(last_stream_, absl::Seconds(10))) {
    // Still waiting on the worker's event: unmapping now would free memory
    // under the GPU. Kept (leaked) instead.
    (void)shared_->memory.release();
    (void)shared_->worker_event.release();
    shared_.reset();
    return absl::UnavailableError("the GPU still waits on the expert worker's event after 10 s; its buffers are "
                                  "left mapped");
  }
  shared_.reset();
  return absl::OkStatus();
}

absl::StatusOr<CudaIpcTransport::Sync> CudaIpcTransport::ParseSync(absl::string_view name) {
  if (name == "auto") return Sync::kAuto;
  if (name == "gpu") return Sync::kGpu;
  if (name == "host") return Sync::kHost;
  if (name == "counter") return Sync::kCounter;
  return absl::InvalidArgumentError(absl::StrCat("CUDA IPC sync \"", name, "\": use auto, counter, gpu or host"));
}

std::function<ExpertTransportFactory(const v1::ShardInfo&, ExpertTransportFactory)> CudaIpcTransport::Wrapper(
    int device, int slots, int initial_tokens, Sync sync) {
  return [=](const v1::ShardInfo& info, ExpertTransportFactory control) -> ExpertTransportFactory {
    const int hidden = info.hidden_size();
    return [=]() -> std::unique_ptr<ExpertTransport> {
      return std::make_unique<CudaIpcTransport>(control(), device, hidden, initial_tokens, slots, sync);
    };
  };
}

void CudaIpcTransport::ReleaseCounter() {
  if (!counter_) return;
  // The worker may still write values up to sent_ into it: never freed now.
  poisoned_ = true;
  if (sent_ != 0) WriteValueNow(counter_->data(), sent_).IgnoreError();
}

absl::Status CudaIpcTransport::Settle() {
  while (!owed_.empty()) {
    const Owed o = owed_.front();
    v1::DispatchResponse response;
    F32Matrix outputs;
    absl::Status st = control_->Receive(&response, &outputs);
    if (st.ok() && response.error_code() != 0) {
      st = absl::Status(static_cast<absl::StatusCode>(response.error_code()), response.error_message());
    } else if (st.ok() && (response.step() != o.step || response.layer() != o.layer ||
                           response.combined_rows() != o.rows)) {
      st = absl::InternalError(absl::StrCat("the worker answered step ", response.step(), " layer ",
                                            response.layer(), " with ", response.combined_rows(),
                                            " combined rows; expected step ", o.step, " layer ", o.layer, " with ",
                                            o.rows));
    }
    if (!st.ok()) {
      // The worker set the counter for failed work it enqueued, but not
      // where it died or never got the request: release every wait here.
      ReleaseCounter();
      owed_.clear();
      return st;
    }
    owed_.pop_front();
  }
  return absl::OkStatus();
}

absl::Status CudaIpcTransport::Send(const v1::DispatchRequest& header, absl::Span<const iovec> rows) {
  return control_->Send(header, rows);
}

absl::Status CudaIpcTransport::Receive(v1::DispatchResponse* response, F32Matrix* outputs) {
  return control_->Receive(response, outputs);
}

absl::Status CudaIpcTransport::Warm() { return shared_ ? absl::OkStatus() : SetUp(initial_tokens_, initial_slots_); }

absl::Status CudaIpcTransport::SetUp(int tokens, int slots) {
  // Answers come in order: those owed come before the set-up's.
  MM_RETURN_IF_ERROR(Settle());
  MM_RETURN_IF_ERROR(CudaSetDevice(device_));
  if (tokens > kMaxTokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("a batch of ", tokens, " tokens; the cuda-ipc transport carries at most ", kMaxTokens));
  }
  int capacity = std::max(tokens, initial_tokens_);
  if (shared_) {  // never smaller; twice as large when it must grow, within the bound
    const int old = shared_->layout.max_tokens();
    capacity = std::max(capacity, tokens > old ? std::min(2 * old, kMaxTokens) : old);
    slots = std::max(slots, shared_->layout.max_slots());
  }
  if (recording_) return absl::FailedPreconditionError("the cuda-ipc connection cannot be set up while recording");
  // The worker frees the old buffers when it makes the new: unmapped first
  // (graphs recorded on them are stale: their replays are refused).
  ++generation_;
  recordings_.clear();
  MM_RETURN_IF_ERROR(Unmap());
  // A fresh counter from 0 with each set-up (the worker's new ready word
  // starts at 0 too): the old one is freed where the stream is past every
  // wait on it and the worker owes it nothing, else kept.
  if (counter_) {
    if (poisoned_ || waited_ != sent_) (void)counter_.release();
    counter_.reset();
    poisoned_ = false;
    counting_ = false;
  }
  if (!router_event_) {
    MM_ASSIGN_OR_RETURN(router_event_, IpcEvent::Create());
  }
  v1::DispatchRequest request;
  v1::CudaIpcSetup* setup = request.mutable_ipc_setup();
  setup->set_max_tokens(capacity);
  setup->set_max_slots(slots);
  MM_ASSIGN_OR_RETURN(std::string event, router_event_->Export());
  setup->set_router_event(std::move(event));
  // A counter where the driver can: one word per set-up.
  if ((sync_ == Sync::kCounter || sync_ == Sync::kAuto) && StreamMemOpsSupported(device_)) {
    MM_ASSIGN_OR_RETURN(counter_, DeviceBuffer::Allocate(256));
    MM_RETURN_IF_ERROR(counter_->Fill(0));
    sent_ = waited_ = 0;
  }
  if (counter_) {
    MM_ASSIGN_OR_RETURN(std::string handle, ExportDeviceMemory(*counter_));
    setup->set_router_counter(std::move(handle));
  }
  v1::DispatchResponse response;
  F32Matrix none;
  MM_RETURN_IF_ERROR(control_->Send(request, {}));
  MM_RETURN_IF_ERROR(control_->Receive(&response, &none));
  if (response.error_code() != 0) {
    return absl::Status(static_cast<absl::StatusCode>(response.error_code()),
                        absl::StrCat("setting CUDA IPC up: ", response.error_message()));
  }
  const v1::CudaIpcBuffers& b = response.ipc_buffers();
  if (b.max_tokens() < capacity || b.max_slots() < slots) {
    return absl::InternalError(absl::StrCat("the worker set CUDA IPC up for ", b.max_tokens(), " tokens of ",
                                            b.max_slots(), " slots; asked for ", capacity, " of ", slots));
  }
  auto shared = std::make_unique<Shared>();
  shared->layout = b;
  counting_ = counter_ != nullptr && b.counter();
  if (counting_ && !base_) {  // for recordings (not allocated while a stream is captured)
    MM_ASSIGN_OR_RETURN(base_, DeviceBuffer::Allocate(256));
    MM_RETURN_IF_ERROR(base_->Fill(0));
  }
  MM_ASSIGN_OR_RETURN(shared->worker_event, IpcEvent::Open(b.worker_event()));
  MM_ASSIGN_OR_RETURN(shared->memory, IpcMemory::Open(b.memory()));
  shared_ = std::move(shared);
  return absl::OkStatus();
}

absl::Status CudaIpcTransport::SendOnDevice(const v1::DispatchRequest& header, const ExpertBatch& batch) {
  if (!batch.on_device || !header.has_ipc()) {
    return absl::InvalidArgumentError("the cuda-ipc transport sends CUDA IPC requests of rows in GPU memory");
  }
  const int n = batch.num_tokens, slots = batch.routing_on_device ? batch.slots : 0;
  if (batch.hidden_size != hidden_ || header.ipc().slots() != slots) {
    return absl::InvalidArgumentError(absl::StrCat("a batch of hidden size ", batch.hidden_size, " and ", slots,
                                                   " routed slots for a cuda-ipc transport of hidden size ", hidden_,
                                                   " (request: ", header.ipc().slots(), " slots)"));
  }
  last_stream_ = batch.cuda_stream;  // old buffers, when these outgrow them, go once its work is done
  if (!shared_ || n > shared_->layout.max_tokens() || slots > shared_->layout.max_slots()) {
    MM_RETURN_IF_ERROR(SetUp(n, slots));  // refused while recording
  }
  const v1::CudaIpcBuffers& b = shared_->layout;
  CudaStream stream = batch.cuda_stream;
  MM_RETURN_IF_ERROR(CopyOnDeviceAsync(shared_->at(b.hidden_offset()), batch.hidden_states,
                                       static_cast<size_t>(n) * hidden_ * sizeof(float), stream));
  if (slots > 0) {
    const size_t routes = static_cast<size_t>(n) * slots;
    MM_RETURN_IF_ERROR(CopyOnDeviceAsync(shared_->at(b.ids_offset()), batch.expert_ids, routes * sizeof(int), stream));
    MM_RETURN_IF_ERROR(
        CopyOnDeviceAsync(shared_->at(b.weights_offset()), batch.weights, routes * sizeof(float), stream));
  }
  expect_step_ = header.step();
  expect_layer_ = header.layer();
  expect_rows_ = n;
  if (recording_) {
    // The hop's number is the replay's base plus its place in the graph.
    if (taking_->requests.empty()) taking_->stream = stream;
    taking_->requests.push_back(header);
    const uint32_t k = static_cast<uint32_t>(taking_->requests.size());
    return SignalWordAsync(shared_->at(b.ready_offset()), base_->as<uint32_t>(), k, stream);
  }
  if (counting_) {
    // Unread answers stay few where no one settles (Execute settles).
    if (owed_.size() >= kMaxOwed) MM_RETURN_IF_ERROR(Settle());
    // The worker's GPU waits for this request's number in the ready word,
    // set once the copies above are done.
    if (++sent_ == 0) ++sent_;  // 0 is the words' start: never a request's
    MM_RETURN_IF_ERROR(StreamWriteValue(stream, shared_->at(b.ready_offset()), sent_));
    v1::DispatchRequest numbered = header;
    numbered.mutable_ipc()->set_done_value(sent_);
    MM_RETURN_IF_ERROR(control_->Send(numbered, {}));
    owed_.push_back({header.step(), header.layer(), n});
    return absl::OkStatus();
  }
  // The worker's wait sees this record: it is made before the request goes.
  MM_RETURN_IF_ERROR(router_event_->Record(stream));
  if (sync_ != Sync::kHost) return control_->Send(header, {});
  MM_RETURN_IF_ERROR(router_event_->Synchronize());
  v1::DispatchRequest synced = header;
  synced.mutable_ipc()->set_host_sync(true);
  return control_->Send(synced, {});
}

absl::Status CudaIpcTransport::ReceiveOnDevice(v1::DispatchResponse* response, F32Matrix* outputs, float* out,
                                               void* stream) {
  if (counting_) {
    // The answer is read later (Settle): the GPU waits for the worker's word
    // and copies the rows out after it.
    if (expect_rows_ < 0 || !shared_) return absl::InternalError("a CUDA IPC answer awaited without a request");
    response->Clear();
    response->set_step(expect_step_);
    response->set_layer(expect_layer_);
    response->set_combined_rows(expect_rows_);
    last_stream_ = stream;
    if (recording_) {
      MM_RETURN_IF_ERROR(AwaitWordAsync(counter_->data(), base_->as<uint32_t>(),
                                        static_cast<uint32_t>(taking_->requests.size()), stream));
    } else {
      MM_RETURN_IF_ERROR(StreamWaitValue(stream, counter_->data(), sent_));
      waited_ = sent_;
    }
    MM_RETURN_IF_ERROR(CopyOnDeviceAsync(out, shared_->at(shared_->layout.out_offset()),
                                         static_cast<size_t>(expect_rows_) * hidden_ * sizeof(float), stream));
    *outputs = F32Matrix{};
    outputs->rows = expect_rows_;
    outputs->cols = hidden_;
    expect_rows_ = -1;
    return absl::OkStatus();
  }
  MM_RETURN_IF_ERROR(control_->Receive(response, outputs));
  *outputs = F32Matrix{};
  if (response->error_code() != 0) return absl::OkStatus();
  if (!shared_) return absl::InternalError("a CUDA IPC answer on a connection not set up");
  // Checked before anything is copied: a stale or wrong answer must not
  // write past the rows the caller's buffer holds.
  const int64_t rows = response->combined_rows();
  if (response->step() != expect_step_ || response->layer() != expect_layer_ || rows != expect_rows_) {
    return absl::InternalError(absl::StrCat("the worker answered step ", response->step(), " layer ",
                                            response->layer(), " with ", rows, " combined rows; expected step ",
                                            expect_step_, " layer ", expect_layer_, " with ", expect_rows_));
  }
  expect_rows_ = -1;
  last_stream_ = stream;
  // With host_sync the worker answered once its rows were written.
  if (sync_ != Sync::kHost) MM_RETURN_IF_ERROR(shared_->worker_event->WaitOn(stream));
  MM_RETURN_IF_ERROR(CopyOnDeviceAsync(out, shared_->at(shared_->layout.out_offset()),
                                       static_cast<size_t>(rows) * hidden_ * sizeof(float), stream));
  outputs->rows = rows;
  outputs->cols = hidden_;
  return absl::OkStatus();
}

absl::Status CudaIpcTransport::BeginRecording() {
  if (!records()) return absl::FailedPreconditionError("cuda-ipc records only with a counter, once set up");
  if (recording_) return absl::FailedPreconditionError("cuda-ipc is recording already");
  taking_ = std::make_unique<Recording>();
  taking_->generation = generation_;
  recording_ = true;
  return absl::OkStatus();
}

absl::StatusOr<int64_t> CudaIpcTransport::EndRecording(bool keep) {
  if (!recording_) return absl::FailedPreconditionError("cuda-ipc is not recording");
  recording_ = false;
  std::unique_ptr<Recording> r = std::move(taking_);
  expect_rows_ = -1;
  if (!keep) return -1;
  const int64_t id = next_recording.fetch_add(1) + 1;
  recordings_[id] = std::move(r);
  return id;
}

void CudaIpcTransport::ForgetRecording(int64_t id) { recordings_.erase(id); }

absl::Status CudaIpcTransport::ArmReplay(int64_t id) {
  armed_ = nullptr;
  auto it = recordings_.find(id);
  if (it == recordings_.end()) return absl::FailedPreconditionError("a recording this cuda-ipc connection lacks");
  const Recording& r = *it->second;
  if (r.generation != generation_ || !counting_ || poisoned_ || !shared_ || recording_) {
    return absl::FailedPreconditionError("the cuda-ipc connection was set up afresh since the graph was recorded");
  }
  const uint32_t hops = static_cast<uint32_t>(r.requests.size());
  if (owed_.size() + hops > kMaxOwed) MM_RETURN_IF_ERROR(Settle());
  // 0 is never a hop's number (the words' start): past the wrap, numbers
  // begin again at 1, which the cyclic comparisons take as later.
  uint32_t base = sent_;
  if (base > std::numeric_limits<uint32_t>::max() - hops) base = 0;
  // Before the launch, on its stream (which the mapping, when it goes,
  // waits for).
  MM_RETURN_IF_ERROR(StreamWriteValue(r.stream, base_->data(), base));
  last_stream_ = r.stream;
  // The numbers are the graph's from now on, sent or not (a number
  // skipped is harmless: the words only grow).
  sent_ = waited_ = base + hops;
  armed_ = &r;
  armed_base_ = base;
  return absl::OkStatus();
}

absl::Status CudaIpcTransport::SendReplay(uint64_t* step) {
  if (armed_ == nullptr) return absl::FailedPreconditionError("SendReplay without ArmReplay");
  const Recording& r = *armed_;
  armed_ = nullptr;
  for (size_t i = 0; i < r.requests.size(); ++i) {
    v1::DispatchRequest numbered = r.requests[i];
    numbered.set_step(++*step);
    numbered.mutable_ipc()->set_done_value(armed_base_ + static_cast<uint32_t>(i) + 1);
    if (absl::Status st = control_->Send(numbered, {}); !st.ok()) {
      // The graph runs already: its waits on this worker are let go.
      ReleaseCounter();
      return st;
    }
    owed_.push_back({numbered.step(), numbered.layer(), numbered.hidden_states().shape(0)});
  }
  return absl::OkStatus();
}

}  // namespace moemesh
