#include "services/expert/cuda_expert_device.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/engine/cuda/device_weights.h"
#include "core/kernels/cuda/expert_ffn.h"
#include "core/model/weights.h"
#include "services/expert/expert_worker.h"

namespace moemesh {

struct CudaExpertDevice::Lane {
  std::unique_ptr<CudaExpertFfn> ffn;
  std::unique_ptr<OwnedStream> in, compute, out;
  std::unique_ptr<PinnedBuffer> host_x, host_w, host_y;
  std::unique_ptr<DeviceBuffer> x, w, y;
  std::vector<std::unique_ptr<CudaEvent>> copied, computed;  // one each per chunk

  // Waits for everything the lane has enqueued (after an error, so that the
  // next request may reuse or free its buffers).
  void Drain() {
    for (const auto* s : {&in, &compute, &out}) CudaSynchronize((*s)->get()).IgnoreError();
  }
};

CudaExpertDevice::CudaExpertDevice() = default;

CudaExpertDevice::~CudaExpertDevice() {
  for (auto& lane : lanes_) lane->Drain();
}

ExpertDeviceFactory CudaExpertDevice::Factory(int device_index, const Options& options) {
  return [device_index, options](const ModelConfig& c, const ModelWeights& w) {
    return Create(c, w, device_index, options);
  };
}

absl::StatusOr<std::unique_ptr<ExpertDevice>> CudaExpertDevice::Create(const ModelConfig& config,
                                                                       const ModelWeights& weights,
                                                                       int device_index, const Options& options) {
  if (options.lanes < 1 || options.chunk_rows < 1) {
    return absl::InvalidArgumentError("CudaExpertDevice: lanes and chunk_rows must be >= 1");
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
  if (!d->experts_.empty()) {
    for (int i = 0; i < options.lanes; ++i) {
      auto lane = std::make_unique<Lane>();
      MM_ASSIGN_OR_RETURN(lane->ffn, CudaExpertFfn::Create(d->hidden_, d->intermediate_));
      MM_ASSIGN_OR_RETURN(lane->in, OwnedStream::Create());
      MM_ASSIGN_OR_RETURN(lane->compute, OwnedStream::Create());
      MM_ASSIGN_OR_RETURN(lane->out, OwnedStream::Create());
      absl::MutexLock lock(&d->mu_);
      d->free_.push_back(lane.get());
      d->lanes_.push_back(std::move(lane));
    }
  }
  return std::unique_ptr<ExpertDevice>(std::move(d));
}

absl::Status CudaExpertDevice::Run(const ExpertWork& work, float* out) {
  size_t rows = 0;
  for (const ExpertWork::Group& g : work.groups) rows += g.rows.size();
  if (rows == 0) return absl::OkStatus();
  if (lanes_.empty()) return absl::FailedPreconditionError("this GPU worker holds no experts");
  Lane* lane = nullptr;
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](std::vector<Lane*>* free) { return !free->empty(); }, &free_));
    lane = free_.back();
    free_.pop_back();
  }
  absl::Status st = RunOn(*lane, work, out);
  if (!st.ok()) lane->Drain();
  absl::MutexLock lock(&mu_);
  free_.push_back(lane);
  return st;
}

absl::Status CudaExpertDevice::RunOn(Lane& lane, const ExpertWork& work, float* out) {
  MM_RETURN_IF_ERROR(CudaSetDevice(device_));
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
    auto it = experts_.find({work.layer, g.expert});
    if (it == experts_.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("expert ", g.expert, " of layer ", work.layer, " is not on this GPU"));
    }
    if (chunks.back().rows >= static_cast<size_t>(options_.chunk_rows)) {
      chunks.emplace_back();
      chunks.back().first_row = total;
    }
    Chunk& c = chunks.back();
    const uint16_t* gate = it->second.gate_up->as<uint16_t>();
    c.groups.push_back({gate, gate + static_cast<size_t>(intermediate_) * h, it->second.down->as<uint16_t>(),
                        static_cast<int>(c.rows), static_cast<int>(g.rows.size())});
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
