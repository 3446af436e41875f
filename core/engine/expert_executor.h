#ifndef MOEMESH_CORE_ENGINE_EXPERT_EXECUTOR_H_
#define MOEMESH_CORE_ENGINE_EXPERT_EXECUTOR_H_

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace moemesh {

class ExpertWeightsTable;
class ThreadPool;

// The routed rows of one MoE layer: token t goes to experts
// expert_ids[t * slots + j] with weights weights[t * slots + j]; id -1
// marks an unused slot.
struct ExpertBatch {
  int layer = 0;
  int num_tokens = 0;
  int hidden_size = 0;
  const float* hidden_states = nullptr;  // [num_tokens, hidden_size]
  int slots = 0;
  const int* expert_ids = nullptr;       // [num_tokens, slots]
  const float* weights = nullptr;        // [num_tokens, slots]
};

// The seam between the model and its routed experts: the engine calls it
// once per MoE layer per step. Implementations run the experts in process
// (LocalExpertExecutor) or on remote expert workers.
class ExpertExecutor {
 public:
  virtual ~ExpertExecutor() = default;
  // Writes out[t] = sum_j weights[t, j] * FFN_{expert_ids[t, j]}(x_t),
  // adding the experts of a token in increasing id order. `out` is
  // [num_tokens, hidden_size] and is overwritten. Not required to be
  // thread-safe; the engine calls it from one thread.
  virtual absl::Status Execute(const ExpertBatch& batch, float* out) = 0;
};

struct FfnWeights;

// Runs one expert on `rows` of `hidden_states` ([*, hidden_size]) and writes
// weights[i] * FFN(hidden_states[rows[i]]) to out[i] ([rows.size(),
// hidden_size]). The building block of local and remote expert execution.
void ComputeExpertRows(const FfnWeights& expert, const float* hidden_states, int hidden_size,
                       absl::Span<const int> rows, absl::Span<const float> weights, float* out,
                       ThreadPool* pool);

// Runs experts from a weights table in this process. NOT_FOUND when a batch
// names an expert the table lacks.
class LocalExpertExecutor : public ExpertExecutor {
 public:
  // `table` and `pool` must outlive the executor; `pool` may be null.
  LocalExpertExecutor(const ExpertWeightsTable* table, ThreadPool* pool)
      : table_(table), pool_(pool) {}
  absl::Status Execute(const ExpertBatch& batch, float* out) override;

 private:
  const ExpertWeightsTable* table_;
  ThreadPool* pool_;
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_ENGINE_EXPERT_EXECUTOR_H_
