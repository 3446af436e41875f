#include "core/experts/cuda/cuda_expert_device.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/experts/cuda/device_weights.h"
#include "core/experts/expert_executor.h"
#include "core/experts/expert_work.h"
#include "core/kernels/cpu/gating_rule.h"
#include "core/kernels/cuda/dense.h"
#include "core/kernels/cuda/expert_ffn.h"
#include "core/kernels/cuda/expert_groups.h"
#include "core/model/config.h"
#include "core/model/weights.h"

namespace moemesh {

struct CudaExpertDevice::Lane {
  std::unique_ptr<CudaExpertFfn> ffn;
  std::unique_ptr<OwnedStream> in, compute, out;
  std::unique_ptr<PinnedBuffer> host_x, host_w, host_y;
  std::unique_ptr<DeviceBuffer> x, w, y;
  std::vector<std::unique_ptr<CudaEvent>> copied, computed;  // one each per chunk
  // Work in device memory: the gather, weight and combine tables (pinned,
  // then on the device), and the events that say the lane's last such work
  // is done (`idle`) and its tables were read (`uploaded`).
  std::unique_ptr<PinnedBuffer> host_table;
  std::unique_ptr<DeviceBuffer> table;
  std::unique_ptr<CudaEvent> idle, uploaded;
  // RunRouted's group table and index arrays, made on the device.
  std::unique_ptr<DeviceBuffer> routed;

  // Waits for everything the lane has enqueued, on its own streams and (up
  // to `idle`) on callers' (after an error, so that the next request may
  // reuse or free its buffers).
  void Drain() {
    for (const auto* s : {&in, &compute, &out}) CudaSynchronize((*s)->get()).IgnoreError();
    if (idle) idle->Synchronize().IgnoreError();
  }
};

CudaExpertDevice::CudaExpertDevice() = default;

CudaExpertDevice::~CudaExpertDevice() {
  for (auto& lane : lanes_) lane->Drain();
  absl::MutexLock lock(&routed_mu_);
  if (routed_lane_) routed_lane_->Drain();
}

ExpertDeviceFactory CudaExpertDevice::Factory(int device_index, const Options& options) {
  return [device_index, options](const ModelConfig& c, const ModelWeights& w) {
    return Create(c, w, device_index, options);
  };
}

absl::StatusOr<std::unique_ptr<ExpertDevice>> CudaExpertDevice::Create(const ModelConfig& config,
                                                                       const ModelWeights& weights,
                                                                       int device_index, const Options& options) {
  if (options.lanes < 1 || options.chunk_rows < 1 || options.routed_gemm_min_tokens < 1) {
    return absl::InvalidArgumentError("CudaExpertDevice: lanes, chunk_rows and routed_gemm_min_tokens must be >= 1");
  }
  if (device_index < 0 || device_index >= CudaDeviceCount()) {
    return absl::FailedPreconditionError(absl::StrCat("--device cuda:", device_index, ": this machine has ",
                                                      CudaDeviceCount(), " CUDA device(s)"));
  }
  MM_RETURN_IF_ERROR(CudaSetDevice(device_index));
  std::unique_ptr<CudaExpertDevice> d(new CudaExpertDevice);
  d->options_ = options;
  d->hidden_ = config.hidden_size;
  d->device_ = device_index;
  for (int l = 0; l < config.num_layers; ++l) {
    for (int e = 0; e < config.num_experts; ++e) {
      const FfnWeights* f = weights.experts.Find(l, e);
      if (f == nullptr) continue;
      if (d->intermediate_ == 0) d->intermediate_ = f->gate.rows;
      if (f->gate.rows != d->intermediate_ || f->up.rows != f->gate.rows || f->down.cols != f->gate.rows) {
        return absl::InvalidArgumentError(absl::StrCat("expert ", e, " of layer ", l, " has an FFN size unlike the others"));
      }
      Expert ex;
      MM_ASSIGN_OR_RETURN(ex.gate_up, UploadBf16({&f->gate, &f->up}));
      MM_ASSIGN_OR_RETURN(ex.down, UploadBf16({&f->down}));
      d->experts_.emplace(std::make_pair(l, e), std::move(ex));
    }
  }
  // A layer whose experts are all here can be grouped on the device.
  d->num_experts_ = config.num_experts;
  d->groups_on_device_ = !d->experts_.empty() && config.num_experts <= kMaxGatingExperts;
  for (int l = 0; l < config.num_layers && d->groups_on_device_; ++l) {
    std::vector<ExpertFfnGroup> table;
    int held = 0;
    for (int e = 0; e < config.num_experts; ++e) held += d->Holds(l, e);
    if (held == 0) continue;  // a dense layer, or none of its experts here
    for (int e = 0; e < config.num_experts && held == config.num_experts; ++e) {
      ExpertWork::Group group;
      group.expert = e;
      MM_ASSIGN_OR_RETURN(ExpertFfnGroup g, d->FfnGroup(l, group, 0));
      table.push_back(g);
    }
    if (table.size() != static_cast<size_t>(config.num_experts)) {
      d->groups_on_device_ = false;
      break;
    }
    MM_ASSIGN_OR_RETURN(auto buf, DeviceBuffer::Allocate(table.size() * sizeof(ExpertFfnGroup)));
    MM_RETURN_IF_ERROR(buf->CopyFrom(table.data(), table.size() * sizeof(ExpertFfnGroup)));
    d->layer_groups_[l] = std::move(buf);
  }
  if (!d->groups_on_device_) d->layer_groups_.clear();
  if (!d->experts_.empty()) {
    for (int i = 0; i < options.lanes; ++i) {
      MM_ASSIGN_OR_RETURN(std::unique_ptr<Lane> lane, d->MakeLane());
      absl::MutexLock lock(&d->mu_);
      d->free_.push_back(lane.get());
      d->lanes_.push_back(std::move(lane));
    }
  }
  if (d->groups_on_device_) {
    MM_ASSIGN_OR_RETURN(std::unique_ptr<Lane> lane, d->MakeLane());
    absl::MutexLock lock(&d->routed_mu_);
    d->routed_lane_ = std::move(lane);
  }
  return std::unique_ptr<ExpertDevice>(std::move(d));
}

absl::StatusOr<std::unique_ptr<CudaExpertDevice::Lane>> CudaExpertDevice::MakeLane() const {
  auto lane = std::make_unique<Lane>();
  MM_ASSIGN_OR_RETURN(lane->ffn, CudaExpertFfn::Create(hidden_, intermediate_));
  MM_ASSIGN_OR_RETURN(lane->in, OwnedStream::Create());
  MM_ASSIGN_OR_RETURN(lane->compute, OwnedStream::Create());
  MM_ASSIGN_OR_RETURN(lane->out, OwnedStream::Create());
  MM_ASSIGN_OR_RETURN(lane->idle, CudaEvent::Create());
  MM_ASSIGN_OR_RETURN(lane->uploaded, CudaEvent::Create());
  MM_RETURN_IF_ERROR(lane->idle->Record(lane->compute->get()));
  MM_RETURN_IF_ERROR(lane->uploaded->Record(lane->compute->get()));
  return lane;
}

bool CudaExpertDevice::Holds(int layer, int expert) const {
  return experts_.find({layer, expert}) != experts_.end();
}

absl::StatusOr<ExpertFfnGroup> CudaExpertDevice::FfnGroup(int layer, const ExpertWork::Group& g,
                                                          size_t row_offset) const {
  auto it = experts_.find({layer, g.expert});
  if (it == experts_.end()) {
    return absl::FailedPreconditionError(absl::StrCat("expert ", g.expert, " of layer ", layer, " is not on this GPU"));
  }
  const uint16_t* gate = it->second.gate_up->as<uint16_t>();
  return ExpertFfnGroup{gate, gate + static_cast<size_t>(intermediate_) * hidden_, it->second.down->as<uint16_t>(),
                        static_cast<int>(row_offset), static_cast<int>(g.rows.size())};
}

absl::Status CudaExpertDevice::OnLane(const std::function<absl::Status(Lane&)>& fn) {
  if (lanes_.empty()) return absl::FailedPreconditionError("this GPU holds no experts");
  Lane* lane = nullptr;
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](std::vector<Lane*>* free) { return !free->empty(); }, &free_));
    lane = free_.back();
    free_.pop_back();
  }
  absl::Status st = fn(*lane);
  if (!st.ok()) lane->Drain();
  absl::MutexLock lock(&mu_);
  free_.push_back(lane);
  return st;
}

absl::Status CudaExpertDevice::CheckWork(const ExpertWork& work) const {
  if (work.hidden_size != hidden_) {
    return absl::InvalidArgumentError(
        absl::StrCat("hidden size ", work.hidden_size, " does not match the experts' ", hidden_));
  }
  return absl::OkStatus();
}

absl::Status CudaExpertDevice::Run(const ExpertWork& work, float* out) {
  MM_RETURN_IF_ERROR(CheckWork(work));
  if (work.total_rows() == 0) return absl::OkStatus();
  return OnLane([&](Lane& lane) {
    return work.on_device ? RunOnDevice(lane, work, /*combine=*/false, out) : RunFromHost(lane, work, out);
  });
}

absl::Status CudaExpertDevice::RunCombined(const ExpertWork& work, float* out) {
  // Rows in host memory come back per expert and are added on the host (a
  // CPU router's): only the device path keeps them here.
  MM_RETURN_IF_ERROR(CheckWork(work));
  if (!work.on_device) return ExpertDevice::RunCombined(work, out);
  return OnLane([&](Lane& lane) { return RunOnDevice(lane, work, /*combine=*/true, out); });
}

absl::Status CudaExpertDevice::RunOnDevice(Lane& lane, const ExpertWork& work, bool combine, float* out) {
  MM_RETURN_IF_ERROR(CudaSetDevice(device_));
  const CudaStream stream = work.cuda_stream;
  const size_t h = hidden_, total = work.total_rows();
  // One table, uploaded by one copy: the rows to gather, their weights and
  // the combine's offsets and row order (ints and floats are both 4 bytes).
  std::vector<ExpertFfnGroup> groups;
  groups.reserve(work.groups.size());
  std::vector<int> offsets, order;
  if (combine) CombineTable(work, work.num_rows, &offsets, &order);
  const size_t words = 2 * total + offsets.size() + order.size();
  // The lane's buffers may be in use by its last work, on another stream
  // perhaps: the host waits before growing them (rare) and before rewriting
  // the pinned table (for the last table's upload: early in the last call's
  // work, so this seldom waits long), and this stream waits before the
  // device buffers are written.
  MM_RETURN_IF_ERROR(lane.uploaded->Synchronize());
  if (!lane.table || lane.table->bytes() < words * 4 || !lane.x || lane.x->bytes() < total * h * sizeof(float) ||
      (combine && (!lane.y || lane.y->bytes() < total * h * sizeof(float)))) {
    MM_RETURN_IF_ERROR(lane.idle->Synchronize());
    MM_RETURN_IF_ERROR(GrowBuffer(&lane.host_table, words * 4));
    MM_RETURN_IF_ERROR(GrowBuffer(&lane.table, words * 4));
    MM_RETURN_IF_ERROR(GrowBuffer(&lane.x, total * h * sizeof(float)));
    if (combine) MM_RETURN_IF_ERROR(GrowBuffer(&lane.y, total * h * sizeof(float)));
  }
  int* gather = lane.host_table->as<int>();
  float* weight = lane.host_table->as<float>() + total;
  size_t row = 0;
  for (const ExpertWork::Group& g : work.groups) {
    if (g.rows.empty()) continue;
    MM_ASSIGN_OR_RETURN(ExpertFfnGroup group, FfnGroup(work.layer, g, row));
    groups.push_back(group);
    for (size_t r = 0; r < g.rows.size(); ++r, ++row) {
      gather[row] = g.rows[r];
      weight[row] = g.weights[r];
    }
  }
  std::copy(offsets.begin(), offsets.end(), gather + 2 * total);
  std::copy(order.begin(), order.end(), gather + 2 * total + offsets.size());
  MM_RETURN_IF_ERROR(lane.idle->WaitOn(stream));
  const int* table = lane.table->as<int>();
  float* x = lane.x->as<float>();
  auto enqueue = [&]() -> absl::Status {
    MM_RETURN_IF_ERROR(CopyToDeviceAsync(lane.table->data(), gather, words * 4, stream));
    MM_RETURN_IF_ERROR(lane.uploaded->Record(stream));
    if (total == 0) {  // no token routed here: the combine writes zeros
      return combine ? CombineRowsCuda(nullptr, hidden_, table, table, work.num_rows, out, stream)
                     : absl::OkStatus();
    }
    MM_RETURN_IF_ERROR(GatherRowsCuda(work.hidden_states, hidden_, table, static_cast<int>(total), x, stream));
    const float* w = reinterpret_cast<const float*>(table + total);
    if (!combine) return lane.ffn->Run(x, w, groups, out, stream);
    float* y = lane.y->as<float>();
    MM_RETURN_IF_ERROR(lane.ffn->Run(x, w, groups, y, stream));
    return CombineRowsCuda(y, hidden_, table + 2 * total, table + 2 * total + offsets.size(), work.num_rows, out,
                           stream);
  };
  // Whatever got enqueued on the caller's stream, failed call or not, uses
  // the lane's buffers: the lane is busy until that is done.
  const absl::Status st = enqueue();
  const absl::Status recorded = lane.idle->Record(stream);
  return st.ok() ? recorded : st;
}

absl::Status CudaExpertDevice::RunRoutedInGemms(const ExpertBatch& batch, float* out) {
  MM_RETURN_IF_ERROR(CudaSetDevice(device_));
  const size_t routes = static_cast<size_t>(batch.num_tokens) * batch.slots;
  std::vector<int> ids(routes);
  std::vector<float> weights(routes);
  MM_RETURN_IF_ERROR(CopyToHostAsync(ids.data(), batch.expert_ids, routes * sizeof(int), batch.cuda_stream));
  MM_RETURN_IF_ERROR(CopyToHostAsync(weights.data(), batch.weights, routes * sizeof(float), batch.cuda_stream));
  MM_RETURN_IF_ERROR(CudaSynchronize(batch.cuda_stream));
  for (int& id : ids) id = id >= 0 && id < num_experts_ ? id : -1;  // as GroupExpertsCuda counts them
  ExpertBatch host = batch;
  host.expert_ids = ids.data();
  host.weights = weights.data();
  host.routing_on_device = false;
  ExpertWork work;
  MM_RETURN_IF_ERROR(GroupByExpert(host, num_experts_, &work));
  return RunCombined(work, out);
}

absl::Status CudaExpertDevice::RunRouted(const ExpertBatch& batch, float* out) {
  if (batch.hidden_size != hidden_) {
    return absl::InvalidArgumentError(
        absl::StrCat("hidden size ", batch.hidden_size, " does not match the experts' ", hidden_));
  }
  if (!batch.on_device || !batch.routing_on_device) {
    return absl::InvalidArgumentError("RunRouted takes rows and routing in device memory");
  }
  auto table = layer_groups_.find(batch.layer);
  if (table == layer_groups_.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("layer ", batch.layer, "'s experts are not all on this GPU: it cannot group them itself"));
  }
  if (batch.num_tokens == 0) return absl::OkStatus();
  if (batch.num_tokens >= options_.routed_gemm_min_tokens && !CudaStreamIsCapturing(batch.cuda_stream)) {
    return RunRoutedInGemms(batch, out);
  }
  absl::MutexLock lock(&routed_mu_);
  Lane& lane = *routed_lane_;
  absl::Status done = [&]() -> absl::Status {
    MM_RETURN_IF_ERROR(CudaSetDevice(device_));
    const CudaStream stream = batch.cuda_stream;
    const size_t tokens = batch.num_tokens, routes = tokens * batch.slots, h = hidden_;
    // The group table first (16-byte aligned), then gather, row weights,
    // combine offsets and combine index (4 bytes each).
    const size_t table_bytes = (num_experts_ * sizeof(ExpertFfnGroup) + 15) / 16 * 16;
    const size_t bytes = table_bytes + (3 * routes + tokens + 1) * 4;
    if (!lane.routed || lane.routed->bytes() < bytes || !lane.y || lane.y->bytes() < routes * h * sizeof(float)) {
      MM_RETURN_IF_ERROR(lane.idle->Synchronize());  // the lane's last work may still read them
      MM_RETURN_IF_ERROR(GrowBuffer(&lane.routed, bytes));
      MM_RETURN_IF_ERROR(GrowBuffer(&lane.y, routes * h * sizeof(float)));
    }
    // A CUDA graph's capture cannot wait on, or record, an event from
    // outside it: a captured step orders its work on its own stream, where
    // the forward pass that captures it runs every step.
    const bool capturing = CudaStreamIsCapturing(stream);
    if (!capturing) MM_RETURN_IF_ERROR(lane.idle->WaitOn(stream));
    char* base = static_cast<char*>(lane.routed->data());
    DeviceExpertGroups groups;
    groups.groups = reinterpret_cast<ExpertFfnGroup*>(base);
    groups.gather = reinterpret_cast<int*>(base + table_bytes);
    groups.row_weight = reinterpret_cast<float*>(groups.gather + routes);
    groups.combine_offsets = reinterpret_cast<int*>(groups.row_weight + routes);
    groups.combine_index = groups.combine_offsets + tokens + 1;
    float* y = lane.y->as<float>();
    auto enqueue = [&]() -> absl::Status {
      MM_RETURN_IF_ERROR(GroupExpertsCuda(batch.expert_ids, batch.weights, batch.num_tokens, batch.slots,
                                          num_experts_, table->second->as<ExpertFfnGroup>(), groups, stream));
      // A token routes to an expert at most once: no group has more rows
      // than there are tokens.
      MM_RETURN_IF_ERROR(lane.ffn->RunGathered(batch.hidden_states, groups.gather, groups.row_weight, groups.groups,
                                               num_experts_, static_cast<int>(routes), batch.num_tokens, y, stream));
      return CombineRowsCuda(y, hidden_, groups.combine_offsets, groups.combine_index, batch.num_tokens, out,
                             stream);
    };
    const absl::Status st = enqueue();
    const absl::Status recorded = capturing ? absl::OkStatus() : lane.idle->Record(stream);
    return st.ok() ? recorded : st;
  }();
  if (!done.ok()) lane.Drain();
  return done;
}

absl::Status CudaExpertDevice::RunFromHost(Lane& lane, const ExpertWork& work, float* out) {
  MM_RETURN_IF_ERROR(CudaSetDevice(device_));
  MM_RETURN_IF_ERROR(lane.idle->Synchronize());  // the lane's last work on the device may use its buffers
  const size_t h = hidden_;
  // Chunks of whole groups, about chunk_rows rows each.
  struct Chunk {
    size_t first_row = 0, rows = 0;
    std::vector<ExpertFfnGroup> groups;  // row_offset within the chunk
    std::vector<const ExpertWork::Group*> sources;
  };
  std::vector<Chunk> chunks(1);
  size_t total = 0;
  for (const ExpertWork::Group& g : work.groups) {
    if (g.rows.empty()) continue;
    if (chunks.back().rows >= static_cast<size_t>(options_.chunk_rows)) {
      chunks.emplace_back();
      chunks.back().first_row = total;
    }
    Chunk& c = chunks.back();
    MM_ASSIGN_OR_RETURN(ExpertFfnGroup group, FfnGroup(work.layer, g, c.rows));
    c.groups.push_back(group);
    c.sources.push_back(&g);
    c.rows += g.rows.size();
    total += g.rows.size();
  }
  // The lane is idle here (the last request waited for its copies out), so
  // its buffers may grow.
  MM_RETURN_IF_ERROR(GrowBuffer(&lane.host_x, total * h * sizeof(float)));
  MM_RETURN_IF_ERROR(GrowBuffer(&lane.host_w, total * sizeof(float)));
  MM_RETURN_IF_ERROR(GrowBuffer(&lane.host_y, total * h * sizeof(float)));
  MM_RETURN_IF_ERROR(GrowBuffer(&lane.x, total * h * sizeof(float)));
  MM_RETURN_IF_ERROR(GrowBuffer(&lane.w, total * sizeof(float)));
  MM_RETURN_IF_ERROR(GrowBuffer(&lane.y, total * h * sizeof(float)));
  while (lane.copied.size() < chunks.size()) {
    MM_ASSIGN_OR_RETURN(auto copied, CudaEvent::Create());
    MM_ASSIGN_OR_RETURN(auto computed, CudaEvent::Create());
    lane.copied.push_back(std::move(copied));
    lane.computed.push_back(std::move(computed));
  }
  CudaStream in = lane.in->get(), compute = lane.compute->get(), copy_out = lane.out->get();
  for (size_t i = 0; i < chunks.size(); ++i) {
    const Chunk& c = chunks[i];
    float* const x0 = lane.host_x->as<float>() + c.first_row * h;
    float* const w0 = lane.host_w->as<float>() + c.first_row;
    float* hx = x0;
    float* hw = w0;
    // Gathering this chunk overlaps the copies and kernels of the last.
    for (const ExpertWork::Group* g : c.sources) {
      for (size_t r = 0; r < g->rows.size(); ++r) {
        std::memcpy(hx, work.hidden_states + static_cast<size_t>(g->rows[r]) * h, h * sizeof(float));
        hx += h;
        *hw++ = g->weights[r];
      }
    }
    float* dx = lane.x->as<float>() + c.first_row * h;
    float* dw = lane.w->as<float>() + c.first_row;
    float* dy = lane.y->as<float>() + c.first_row * h;
    MM_RETURN_IF_ERROR(CopyToDeviceAsync(dx, x0, c.rows * h * sizeof(float), in));
    MM_RETURN_IF_ERROR(CopyToDeviceAsync(dw, w0, c.rows * sizeof(float), in));
    MM_RETURN_IF_ERROR(lane.copied[i]->Record(in));
    MM_RETURN_IF_ERROR(lane.copied[i]->WaitOn(compute));
    MM_RETURN_IF_ERROR(lane.ffn->Run(dx, dw, c.groups, dy, compute));
    MM_RETURN_IF_ERROR(lane.computed[i]->Record(compute));
    MM_RETURN_IF_ERROR(lane.computed[i]->WaitOn(copy_out));
    MM_RETURN_IF_ERROR(
        CopyToHostAsync(lane.host_y->as<float>() + c.first_row * h, dy, c.rows * h * sizeof(float), copy_out));
  }
  // The copies out wait for every chunk's kernels, which wait for the
  // copies in: one wait covers the lane.
  MM_RETURN_IF_ERROR(CudaSynchronize(copy_out));
  std::memcpy(out, lane.host_y->as<float>(), total * h * sizeof(float));
  return absl::OkStatus();
}

}  // namespace moemesh
