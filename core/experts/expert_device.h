#ifndef MOEMESH_CORE_EXPERTS_EXPERT_DEVICE_H_
#define MOEMESH_CORE_EXPERTS_EXPERT_DEVICE_H_

#include <functional>
#include <memory>

#include "absl/status/statusor.h"

namespace moemesh {

struct ExpertBatch;
struct ExpertWork;
struct ModelConfig;
struct ModelWeights;

// Where experts compute: the CPU kernels (CpuExpertDevice) or a GPU
// (CudaExpertDevice, core/experts/cuda/, in builds with CUDA). Both the
// engine's LocalExpertExecutor and the expert worker run their experts
// through one. Called with work its caller has validated (experts it
// Holds, rows in range), possibly from several threads at once: a device
// serialises what it must itself.
class ExpertDevice {
 public:
  virtual ~ExpertDevice() = default;

  // Whether this device holds expert `expert` of `layer`.
  virtual bool Holds(int layer, int expert) const = 0;

  // The GPU whose memory Run and RunCombined accept (work.on_device), or -1.
  virtual int cuda_device() const { return -1; }

  // Whether the device rounds rows to bf16 before any product, so that rows
  // already rounded to bf16 give exactly the same results (a worker then
  // takes bf16 rows on the wire at half the bytes, for nothing).
  virtual bool rounds_rows_to_bf16() const { return false; }

  // Writes weights * FFN_expert(row) for every (group, row), in group
  // order, to `out` ([work.total_rows(), hidden_size]).
  virtual absl::Status Run(const ExpertWork& work, float* out) = 0;

  // Writes the combined rows: out[t] = the sum of token t's rows in group
  // order (CombineExpertRows), for t < work.num_rows. This default runs Run
  // and combines on the host; a GPU does both on the device, where
  // work.on_device lets it finish asynchronously on work.cuda_stream.
  virtual absl::Status RunCombined(const ExpertWork& work, float* out);

  // Whether RunRouted works: the device groups the rows itself, on the GPU,
  // for every layer it holds experts of (it holds all of that layer's).
  virtual bool groups_on_device() const { return false; }
  // RunCombined for a batch whose rows and routing are all in this GPU's
  // memory (ExpertBatch::routing_on_device): grouped, computed and combined
  // there, enqueued on batch.cuda_stream without waiting on the host.
  // Validated by the caller except for the expert ids, which the device
  // cannot read: ids outside the layer's experts count as no expert.
  virtual absl::Status RunRouted(const ExpertBatch& batch, float* out);
};

// Makes a device for the experts in `weights` (loaded by the caller, who
// keeps them alive as long as the device).
using ExpertDeviceFactory =
    std::function<absl::StatusOr<std::unique_ptr<ExpertDevice>>(const ModelConfig&, const ModelWeights&)>;

}  // namespace moemesh

#endif  // MOEMESH_CORE_EXPERTS_EXPERT_DEVICE_H_
