#include "services/expert/cuda_expert_device.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/engine/cuda/device_weights.h"
#include "core/kernels/cuda/expert_ffn.h"
#include "core/model/weights.h"
#include "services/expert/expert_worker.h"

namespace moemesh {

ExpertDeviceFactory CudaExpertDevice::Factory(int device_index) {
  return [device_index](const ModelConfig& c, const ModelWeights& w) { return Create(c, w, device_index); };
}

absl::StatusOr<std::unique_ptr<ExpertDevice>> CudaExpertDevice::Create(const ModelConfig& config,
                                                                       const ModelWeights& weights,
                                                                       int device_index) {
  if (device_index < 0 || device_index >= CudaDeviceCount()) {
    return absl::FailedPreconditionError(absl::StrCat("--device cuda:", device_index, ": this machine has ",
                                                      CudaDeviceCount(), " CUDA device(s)"));
  }
  MM_RETURN_IF_ERROR(CudaSetDevice(device_index));
  std::unique_ptr<CudaExpertDevice> d(new CudaExpertDevice);
  d->hidden_ = config.hidden_size;
  d->device_ = device_index;
  for (int l = 0; l < config.num_layers; ++l) {
    for (int e = 0; e < config.num_experts; ++e) {
      const FfnWeights* f = weights.experts.Find(l, e);
      if (f == nullptr) continue;
      if (d->ffn_ == nullptr) {
        MM_ASSIGN_OR_RETURN(d->ffn_, CudaExpertFfn::Create(config.hidden_size, f->gate.rows));
      }
      if (f->gate.rows != d->ffn_->intermediate() || f->up.rows != f->gate.rows || f->down.cols != f->gate.rows) {
        return absl::InvalidArgumentError(absl::StrCat("expert ", e, " of layer ", l, " has an FFN size unlike the others"));
      }
      Expert ex;
      MM_ASSIGN_OR_RETURN(ex.gate_up, UploadBf16({&f->gate, &f->up}));
      MM_ASSIGN_OR_RETURN(ex.down, UploadBf16({&f->down}));
      d->experts_.emplace(std::make_pair(l, e), std::move(ex));
    }
  }
  return std::unique_ptr<ExpertDevice>(std::move(d));
}

absl::Status CudaExpertDevice::Reserve(std::unique_ptr<DeviceBuffer>* buf, size_t bytes) {
  if (*buf && (*buf)->bytes() >= bytes) return absl::OkStatus();
  buf->reset();
  MM_ASSIGN_OR_RETURN(*buf, DeviceBuffer::Allocate(std::max<size_t>(bytes, 1) * 2));  // room to grow
  return absl::OkStatus();
}

absl::Status CudaExpertDevice::Run(const ExpertWork& work, float* out) {
  MM_RETURN_IF_ERROR(CudaSetDevice(device_));
  const int h = hidden_;
  gathered_.clear();
  row_weights_.clear();
  std::vector<ExpertFfnGroup> groups;
  for (const ExpertWork::Group& g : work.groups) {
    auto it = experts_.find({work.layer, g.expert});
    if (it == experts_.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("expert ", g.expert, " of layer ", work.layer, " is not on this GPU"));
    }
    const uint16_t* gate = it->second.gate_up->as<uint16_t>();
    groups.push_back({gate, gate + static_cast<size_t>(ffn_->intermediate()) * h, it->second.down->as<uint16_t>(),
                      static_cast<int>(row_weights_.size()), static_cast<int>(g.rows.size())});
    for (size_t i = 0; i < g.rows.size(); ++i) {
      const float* src = work.hidden_states + static_cast<size_t>(g.rows[i]) * h;
      gathered_.insert(gathered_.end(), src, src + h);
      row_weights_.push_back(g.weights[i]);
    }
  }
  const size_t rows = row_weights_.size();
  if (rows == 0) return absl::OkStatus();
  MM_RETURN_IF_ERROR(Reserve(&x_, gathered_.size() * sizeof(float)));
  MM_RETURN_IF_ERROR(Reserve(&weights_, rows * sizeof(float)));
  MM_RETURN_IF_ERROR(Reserve(&out_, rows * static_cast<size_t>(h) * sizeof(float)));
  MM_RETURN_IF_ERROR(x_->CopyFrom(gathered_.data(), gathered_.size() * sizeof(float)));
  MM_RETURN_IF_ERROR(weights_->CopyFrom(row_weights_.data(), rows * sizeof(float)));
  MM_RETURN_IF_ERROR(ffn_->Run(x_->as<float>(), weights_->as<float>(), groups, out_->as<float>(), nullptr));
  return out_->CopyTo(out, rows * static_cast<size_t>(h) * sizeof(float));
}

}  // namespace moemesh
