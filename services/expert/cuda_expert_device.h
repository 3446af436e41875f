#ifndef MOEMESH_SERVICES_EXPERT_CUDA_EXPERT_DEVICE_H_
#define MOEMESH_SERVICES_EXPERT_CUDA_EXPERT_DEVICE_H_

#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "core/kernels/cuda/cuda_runtime_util.h"
#include "services/expert/expert_device.h"

namespace moemesh {

// An expert worker's experts on a GPU: every expert it holds is uploaded
// once, as bf16 (F32 and F16 checkpoints are rounded to bf16, so results
// differ from the CPU kernels by bf16 rounding), and requests run
// CudaExpertFfn.
//
// Requests run on `lanes`: each lane has its own streams, pinned host
// buffers and device scratch, so that requests from several routers run
// side by side. Within a request the rows go in chunks of about
// `chunk_rows`, pipelined over three streams: while one chunk computes, the
// next is gathered and copied in and the last copied out.
class CudaExpertDevice : public ExpertDevice {
 public:
  struct Options {
    int lanes = 2;
    int chunk_rows = 256;
  };
  // FAILED_PRECONDITION without a GPU `device_index`; RESOURCE_EXHAUSTED
  // when the experts do not fit; INVALID_ARGUMENT for bad options.
  static absl::StatusOr<std::unique_ptr<ExpertDevice>> Create(const ModelConfig& config,
                                                              const ModelWeights& weights, int device_index,
                                                              const Options& options);
  static absl::StatusOr<std::unique_ptr<ExpertDevice>> Create(const ModelConfig& config,
                                                              const ModelWeights& weights, int device_index) {
    return Create(config, weights, device_index, Options());
  }
  ~CudaExpertDevice() override;

  // Thread-safe; up to `lanes` calls run at once, others wait for a lane.
  absl::Status Run(const ExpertWork& work, float* out) override;

  // A factory for ExpertWorker::Options::device.
  static ExpertDeviceFactory Factory(int device_index, const Options& options);
  static ExpertDeviceFactory Factory(int device_index) { return Factory(device_index, Options()); }

 private:
  struct Expert {
    std::unique_ptr<DeviceBuffer> gate_up, down;  // gate and up adjacent
  };
  struct Lane;
  CudaExpertDevice();
  absl::Status RunOn(Lane& lane, const ExpertWork& work, float* out);

  Options options_;
  int hidden_ = 0, intermediate_ = 0, device_ = 0;
  std::map<std::pair<int, int>, Expert> experts_;  // (layer, expert)
  std::vector<std::unique_ptr<Lane>> lanes_;        // empty when the worker holds no experts
  absl::Mutex mu_;
  std::vector<Lane*> free_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_EXPERT_CUDA_EXPERT_DEVICE_H_
