#ifndef MOEMESH_SERVICES_EXPERT_EXPERT_WORKER_H_
#define MOEMESH_SERVICES_EXPERT_EXPERT_WORKER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/config.h"
#include "core/model/weights.h"
#include "core/experts/expert_device.h"
#include "core/experts/expert_work.h"

namespace moemesh {

class ThreadPool;

// The logic of an expert worker, apart from gRPC: loads the experts of its
// shard (expert e of every layer where e mod num_shards == shard_index, or
// as a placement file says) and
// runs batches of rows through them: it validates the work, and its
// ExpertDevice computes it. Thread-safe; on the CPU calls are serialised
// because they share one thread pool, on a GPU they run as the device
// allows (CudaExpertDevice: a few side by side).
class ExpertWorker {
 public:
  struct Options {
    std::string model_dir;
    int shard_index = 0;
    int num_shards = 1;        // ignored with a placement file
    std::string placement_file;  // explicit placement (ShardPlacement); empty: modulo
    int threads = 1;
    // Empty: the CPU kernels with `threads` threads; else e.g. a GPU.
    ExpertDeviceFactory device;
    // The experts quantized as they load (none: as stored; the CPU only).
    QuantSpec quantize;
    // BF16 experts multiply bf16-rounded inputs (WeightLoadOptions::bf16_inputs; the CPU only).
    bool bf16_inputs = false;
  };
  static absl::StatusOr<std::unique_ptr<ExpertWorker>> Create(const Options& options);
  ~ExpertWorker();

  // Writes weights * FFN_expert(row) for every (group, row), in request
  // order, to `out` ([total rows, hidden_size]). INVALID_ARGUMENT for
  // malformed work (bad layer, row, sizes); FAILED_PRECONDITION for an
  // expert this shard does not hold.
  absl::Status Run(const ExpertWork& work, std::vector<float>* out);
  // The same rows summed per token (ExpertDevice::RunCombined) into `out`
  // ([num_rows, hidden_size]): what a request that asks to combine gets.
  absl::Status RunCombined(const ExpertWork& work, std::vector<float>* out);

  // Work whose rows are in this worker's GPU memory (work.on_device, a
  // router's rows shared by CUDA IPC), validated as Run: the combined rows
  // (ExpertDevice::RunCombined) go to `out` ([num_rows, hidden_size], on
  // the device), enqueued on work.cuda_stream.
  absl::Status RunCombinedOnDevice(const ExpertWork& work, float* out);
  // A batch with its routing on this GPU too (ExpertDevice::RunRouted):
  // INVALID_ARGUMENT past kMaxDeviceGroupedRoutes routes, FAILED_PRECONDITION
  // for a layer this worker does not hold whole.
  absl::Status RunRoutedOnDevice(const ExpertBatch& batch, float* out);
  // The GPU of the experts, or -1; whether they are whole layers there
  // (RunRoutedOnDevice works).
  int cuda_device() const { return device_->cuda_device(); }
  bool groups_on_device() const { return device_->groups_on_device(); }

  const ModelConfig& config() const { return config_; }
  // Whether bf16 rows give exactly what f32 rows do (ExpertDevice::rounds_rows_to_bf16).
  bool bf16_rows_exact() const { return device_->rounds_rows_to_bf16(); }
  // ShardInfo.results_tag: this worker's quantization, bf16 inputs, GPU.
  std::string results_tag() const;
  const Options& options() const { return options_; }
  // (layer, experts) this worker holds, in increasing order.
  std::vector<std::pair<int, std::vector<int>>> HeldExperts() const;

 private:
  ExpertWorker() = default;
  // INVALID_ARGUMENT unless `layer` is one of the model's MoE layers.
  absl::Status CheckMoeLayer(int layer) const;
  // INVALID_ARGUMENT / FAILED_PRECONDITION for work Run must refuse; the
  // rows it returns in `*total_rows`.
  absl::Status Validate(const ExpertWork& work, size_t* total_rows) const;

  Options options_;
  ModelConfig config_;
  std::unique_ptr<ModelWeights> weights_;
  std::unique_ptr<ThreadPool> pool_;      // the CPU device's
  std::unique_ptr<ExpertDevice> device_;  // thread-safe
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_EXPERT_EXPERT_WORKER_H_
