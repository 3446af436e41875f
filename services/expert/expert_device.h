#ifndef MOEMESH_SERVICES_EXPERT_EXPERT_DEVICE_H_
#define MOEMESH_SERVICES_EXPERT_EXPERT_DEVICE_H_

#include <functional>
#include <memory>

#include "absl/status/statusor.h"

namespace moemesh {

struct ExpertWork;
struct ModelConfig;
struct ModelWeights;

// Where an expert worker computes: the CPU kernels (the default) or a GPU
// (CudaExpertDevice, services/expert/cuda_expert_device.h, in builds with
// CUDA). Called with work the worker has already validated, from several
// gRPC threads at once: a device serialises what it must itself.
class ExpertDevice {
 public:
  virtual ~ExpertDevice() = default;
  // Writes weights * FFN_expert(row) for every (group, row) in request
  // order to `out` ([total rows, hidden_size]).
  virtual absl::Status Run(const ExpertWork& work, float* out) = 0;
};

// Makes the device once the worker has loaded its experts, which outlive it.
using ExpertDeviceFactory =
    std::function<absl::StatusOr<std::unique_ptr<ExpertDevice>>(const ModelConfig&, const ModelWeights&)>;

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_EXPERT_EXPERT_DEVICE_H_
