#ifndef MOEMESH_CORE_EXPERTS_CPU_EXPERT_DEVICE_H_
#define MOEMESH_CORE_EXPERTS_CPU_EXPERT_DEVICE_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "core/experts/expert_device.h"

namespace moemesh {

class ExpertWeightsTable;
class ThreadPool;
struct FfnWeights;

// Runs one expert on `rows` of `hidden_states` ([*, hidden_size]) and writes
// weights[i] * FFN(hidden_states[rows[i]]) to out[i] ([rows.size(),
// hidden_size]). The CPU's building block; the CUDA kernels are tested
// against it.
void ComputeExpertRows(const FfnWeights& expert, const float* hidden_states, int hidden_size,
                       absl::Span<const int> rows, absl::Span<const float> weights, float* out,
                       ThreadPool* pool);

// The experts of a weights table on the CPU kernels, on `pool` (null: the
// calling thread). Thread-safe: calls take turns, since they share the pool.
// Host memory only (work.on_device is refused with INVALID_ARGUMENT).
class CpuExpertDevice : public ExpertDevice {
 public:
  // `table` and `pool` must outlive the device.
  CpuExpertDevice(const ExpertWeightsTable* table, ThreadPool* pool) : table_(table), pool_(pool) {}

  bool Holds(int layer, int expert) const override;
  absl::Status Run(const ExpertWork& work, float* out) override;

 private:
  const ExpertWeightsTable* const table_;
  absl::Mutex mu_;
  ThreadPool* const pool_ ABSL_PT_GUARDED_BY(mu_);
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_EXPERTS_CPU_EXPERT_DEVICE_H_
