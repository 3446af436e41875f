#ifndef MOEMESH_SERVICES_EXPERT_CUDA_EXPERT_DEVICE_H_
#define MOEMESH_SERVICES_EXPERT_CUDA_EXPERT_DEVICE_H_

#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "core/kernels/cuda/cuda_runtime_util.h"
#include "core/kernels/cuda/expert_ffn.h"
#include "services/expert/expert_device.h"

namespace moemesh {

// An expert worker's experts on a GPU: every expert it holds is uploaded
// once, as bf16 (F32 and F16 checkpoints are rounded to bf16, so results
// differ from the CPU kernels by bf16 rounding), and each request runs
// CudaExpertFfn on device buffers that grow as needed and are reused.
class CudaExpertDevice : public ExpertDevice {
 public:
  // FAILED_PRECONDITION without a GPU `device_index`; RESOURCE_EXHAUSTED
  // when the experts do not fit.
  static absl::StatusOr<std::unique_ptr<ExpertDevice>> Create(const ModelConfig& config,
                                                              const ModelWeights& weights, int device_index);
  absl::Status Run(const ExpertWork& work, float* out) override;

  // A factory for ExpertWorker::Options::device.
  static ExpertDeviceFactory Factory(int device_index);

 private:
  struct Expert {
    std::unique_ptr<DeviceBuffer> gate_up, down;  // gate and up adjacent
  };
  CudaExpertDevice() = default;
  absl::Status Reserve(std::unique_ptr<DeviceBuffer>* buf, size_t bytes);

  int hidden_ = 0, device_ = 0;
  std::unique_ptr<CudaExpertFfn> ffn_;  // null when the worker holds no experts
  std::map<std::pair<int, int>, Expert> experts_;  // (layer, expert)
  std::unique_ptr<DeviceBuffer> x_, weights_, out_;
  std::vector<float> gathered_, row_weights_;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_EXPERT_CUDA_EXPERT_DEVICE_H_
