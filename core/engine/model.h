#ifndef MOEMESH_CORE_ENGINE_MODEL_H_
#define MOEMESH_CORE_ENGINE_MODEL_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/kernels/cpu/rope.h"
#include "core/model/config.h"
#include "core/model/weights.h"

namespace moemesh {

class ExpertExecutor;
class KvCache;
struct KvSequence;
class ThreadPool;

// New tokens of one sequence in a forward step: a prefill chunk or one
// decode token. Their keys are appended to `seq` in `cache`.
struct ForwardItem {
  KvSequence* seq = nullptr;
  absl::Span<const int> tokens;
  bool all_logits = false;  // logits of every token, else of the last only
};

// The forward pass of a MoE decoder on CPU: embeddings, attention over the
// paged KV cache, gating, experts through an ExpertExecutor, LM head. One
// step may mix sequences. Not thread-safe; the thread pool parallelises
// inside each kernel.
class Model {
 public:
  // `weights` must hold the dense part (load_dense).
  static absl::StatusOr<std::unique_ptr<Model>> Create(const ModelConfig& config,
                                                       std::shared_ptr<const ModelWeights> weights,
                                                       ThreadPool* pool);

  const ModelConfig& config() const { return config_; }
  // Floats per position per layer in the KV cache (keys, then values).
  int kv_k_width() const;
  int kv_v_width() const;

  // Runs one step. Appends rows to `logits` ([rows, vocab]): one per item,
  // or one per token for items with all_logits. On error nothing is
  // appended and the sequences' lengths are unchanged (their reserved
  // blocks stay reserved).
  absl::Status Forward(absl::Span<const ForwardItem> items, KvCache* cache,
                       ExpertExecutor* experts, std::vector<float>* logits);

 private:
  Model(const ModelConfig& c, std::shared_ptr<const ModelWeights> w, ThreadPool* pool);

  struct RowInfo;
  void Attention(int layer, const std::vector<RowInfo>& rows, absl::Span<const ForwardItem> items,
                 const float* x, KvCache* cache, float* out);
  void LatentAttention(int layer, const std::vector<RowInfo>& rows,
                       absl::Span<const ForwardItem> items, const float* x, KvCache* cache,
                       float* out);
  absl::Status Mlp(int layer, const float* x, int n, ExpertExecutor* experts, float* out);

  ModelConfig config_;
  std::shared_ptr<const ModelWeights> w_;
  ThreadPool* pool_;
  Rope rope_;
  // Latent attention: kv_b_proj in fp32, per layer [heads * (nope + v), kv_lora].
  std::vector<std::vector<float>> kv_b_f32_;
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_ENGINE_MODEL_H_
