#ifndef MOEMESH_CORE_EXPERTS_CUDA_CUDA_EXPERT_DEVICE_H_
#define MOEMESH_CORE_EXPERTS_CUDA_CUDA_EXPERT_DEVICE_H_

#include <functional>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "core/experts/expert_device.h"
#include "core/experts/expert_work.h"
#include "core/kernels/cuda/cuda_runtime_util.h"

namespace moemesh {

struct ExpertFfnGroup;

// Experts on a GPU: every expert of the weights is uploaded once, as bf16
// (F32 and F16 checkpoints are rounded to bf16, so results differ from the
// CPU kernels by bf16 rounding), and work runs CudaExpertFfn.
//
// Work in host memory (an expert worker's, a CPU router's) runs on one of
// `lanes`: each lane has its own streams, pinned host buffers and device
// scratch, so that requests from several routers run side by side. Within
// a request the rows go in chunks of about `chunk_rows`, pipelined over
// three streams: while one chunk computes, the next is gathered and copied
// in and the last copied out.
//
// Work in device memory (work.on_device: a forward pass on this GPU) is
// gathered, computed and, with RunCombined, combined on the device, all
// enqueued on work.cuda_stream; the call returns without waiting for that
// work (the host waits only where a lane's pinned table or buffers are
// still in use by its last call). With the routing on the device too
// (RunRouted: a decode step's), the rows are grouped there as well
// (GroupExpertsCuda) and computed in the decode kernels, so that the host
// waits for nothing; a large batch (a prefill chunk sent over cuda-ipc)
// has its routing read back and runs as work in device memory does, its
// groups in the GEMMs.
class CudaExpertDevice : public ExpertDevice {
 public:
  struct Options {
    int lanes = 2;
    int chunk_rows = 256;
    // RunRouted with at least this many tokens, outside a graph's capture:
    // the host waits for the routing and groups it, and the groups run in
    // the GEMMs (the decode kernels read a group's weights again for every
    // 32 rows).
    int routed_gemm_min_tokens = 128;
  };
  // FAILED_PRECONDITION without a GPU `device_index`; RESOURCE_EXHAUSTED
  // when the experts do not fit; INVALID_ARGUMENT for bad options or experts
  // of unlike FFN sizes.
  static absl::StatusOr<std::unique_ptr<ExpertDevice>> Create(const ModelConfig& config,
                                                              const ModelWeights& weights, int device_index,
                                                              const Options& options);
  static absl::StatusOr<std::unique_ptr<ExpertDevice>> Create(const ModelConfig& config,
                                                              const ModelWeights& weights, int device_index) {
    return Create(config, weights, device_index, Options());
  }
  ~CudaExpertDevice() override;

  bool Holds(int layer, int expert) const override;
  int cuda_device() const override { return device_; }
  bool rounds_rows_to_bf16() const override { return true; }  // CudaExpertFfn's first step
  // Thread-safe; up to `lanes` calls run at once, others wait for a lane.
  absl::Status Run(const ExpertWork& work, float* out) override;
  absl::Status RunCombined(const ExpertWork& work, float* out) override;
  // Where this GPU holds every expert of each layer it holds any of.
  bool groups_on_device() const override { return groups_on_device_; }
  // On a lane of its own, one call at a time: a forward pass may capture
  // it into a CUDA graph, which names the lane's buffers and replays over
  // them, so no other request may take that lane.
  absl::Status RunRouted(const ExpertBatch& batch, float* out) override;

  // A factory for ExpertWorker::Options::device and EngineOptions::expert_device.
  static ExpertDeviceFactory Factory(int device_index, const Options& options);
  static ExpertDeviceFactory Factory(int device_index) { return Factory(device_index, Options()); }

 private:
  struct Expert {
    std::unique_ptr<DeviceBuffer> gate_up, down;  // gate and up adjacent
  };
  struct Lane;
  CudaExpertDevice();
  absl::StatusOr<std::unique_ptr<Lane>> MakeLane() const;
  // RunRouted for a large batch: the routing to the host, then RunCombined.
  absl::Status RunRoutedInGemms(const ExpertBatch& batch, float* out);
  // Takes a free lane (waiting for one) and gives it back after `fn`.
  absl::Status OnLane(const std::function<absl::Status(Lane&)>& fn);
  // INVALID_ARGUMENT for work these experts cannot take (its hidden size).
  absl::Status CheckWork(const ExpertWork& work) const;
  // The kernel's view of group `g`'s expert, its rows from `row_offset`.
  // FAILED_PRECONDITION for an expert this GPU does not hold.
  absl::StatusOr<ExpertFfnGroup> FfnGroup(int layer, const ExpertWork::Group& g, size_t row_offset) const;
  absl::Status RunFromHost(Lane& lane, const ExpertWork& work, float* out);
  absl::Status RunOnDevice(Lane& lane, const ExpertWork& work, bool combine, float* out);

  Options options_;
  int hidden_ = 0, intermediate_ = 0, device_ = 0, num_experts_ = 0;
  // For RunRouted: each complete layer's experts as a kernel group table
  // (ExpertFfnGroup [num_experts_], rows unset), on the device.
  std::map<int, std::unique_ptr<DeviceBuffer>> layer_groups_;
  bool groups_on_device_ = false;
  absl::Mutex routed_mu_;
  std::unique_ptr<Lane> routed_lane_ ABSL_GUARDED_BY(routed_mu_);  // RunRouted's
  std::map<std::pair<int, int>, Expert> experts_;  // (layer, expert)
  std::vector<std::unique_ptr<Lane>> lanes_;        // empty when there are no experts
  absl::Mutex mu_;
  std::vector<Lane*> free_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_EXPERTS_CUDA_CUDA_EXPERT_DEVICE_H_
