#ifndef MOEMESH_CORE_ENGINE_CPU_FORWARD_PASS_H_
#define MOEMESH_CORE_ENGINE_CPU_FORWARD_PASS_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/engine/decoder.h"
#include "core/engine/forward_pass.h"
#include "core/kernels/cpu/rope.h"
#include "core/model/config.h"
#include "core/model/weights.h"

namespace moemesh {

class ThreadPool;

// The forward pass of a MoE decoder on CPU: embeddings, the decoder layers
// (RunDecoderLayers over this pass's DecoderOps: attention over the paged KV
// cache, gating, experts through an ExpertExecutor), LM head. One step may
// mix sequences. Not thread-safe; the thread pool parallelises inside each
// kernel.
class CpuForwardPass : public ForwardPass, private DecoderOps {
 public:
  // `weights` must hold the dense part (load_dense).
  static absl::StatusOr<std::unique_ptr<CpuForwardPass>> Create(const ModelConfig& config,
                                                       std::shared_ptr<const ModelWeights> weights,
                                                       ThreadPool* pool);

  const ModelConfig& config() const override { return config_; }
  absl::Status Forward(absl::Span<const ForwardItem> items, KvCache* cache, ExpertExecutor* experts,
                       std::vector<float>* logits) override;

 private:
  CpuForwardPass(const ModelConfig& c, std::shared_ptr<const ModelWeights> w, ThreadPool* pool);

  // Where a row of the step's activations comes from.
  struct RowInfo {
    int item;
    int position;
    std::vector<float> cos, sin;  // rotary angles of this position
  };

  // DecoderOps, on the step's rows_.
  absl::StatusOr<float*> Scratch(int slot, size_t count) override;
  absl::Status Linear(int layer, LayerLinear which, const float* x, int n, float* out) override;
  absl::Status RmsNorm(int layer, LayerNorm which, const float* x, int rows, int width, int stride, float eps,
                       float* out) override;
  absl::Status Clamp(float* x, size_t count, float limit) override;
  absl::Status Sigmoid(float* x, size_t count) override;
  absl::Status Add(float* y, const float* x, size_t count) override;
  absl::Status Rotate(float* x, int heads, int token_stride, int head_stride) override;
  absl::Status WriteCache(int layer, const float* k, const float* v) override;
  absl::Status Attend(int layer, const AttentionShape& shape, const float* q, float* out) override;
  absl::Status AbsorbQuery(int layer, const float* q, float* qabs) override;
  absl::Status ExpandLatent(int layer, const float* lat, float* ctx) override;
  absl::Status Ffn(int layer, LayerFfn which, const float* x, const float* row_weight, float* out) override;
  absl::Status StartExperts(int layer, const float* x, const float* logits, ExpertExecutor* experts) override;
  absl::Status FinishExperts(int layer, float* out) override;

  ModelConfig config_;
  std::shared_ptr<const ModelWeights> w_;
  ThreadPool* pool_;
  Rope rope_;
  // Latent attention: kv_b_proj in fp32, per layer [heads * (nope + v), kv_lora].
  std::vector<std::vector<float>> kv_b_f32_;
  std::vector<std::vector<float>> scratch_;  // by DecoderSlot, then the hidden rows
  // The step in flight.
  absl::Span<const ForwardItem> items_;
  KvCache* cache_ = nullptr;
  std::vector<RowInfo> rows_;
  // The routed experts between StartExperts and FinishExperts.
  ExpertExecutor* experts_ = nullptr;
  const float* expert_rows_ = nullptr;
  int slots_ = 0;
  std::vector<int> expert_ids_;
  std::vector<float> expert_weights_;
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_ENGINE_CPU_FORWARD_PASS_H_
