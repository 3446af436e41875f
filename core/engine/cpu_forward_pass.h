#ifndef MOEMESH_CORE_ENGINE_CPU_FORWARD_PASS_H_
#define MOEMESH_CORE_ENGINE_CPU_FORWARD_PASS_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/engine/forward_pass.h"
#include "core/kernels/cpu/rope.h"
#include "core/model/config.h"
#include "core/model/weights.h"

namespace moemesh {

class ThreadPool;

// The forward pass of a MoE decoder on CPU: embeddings, attention over the
// paged KV cache, gating, experts through an ExpertExecutor, LM head. One
// step may mix sequences. Not thread-safe; the thread pool parallelises
// inside each kernel.
class CpuForwardPass : public ForwardPass {
 public:
  // `weights` must hold the dense part (load_dense).
  static absl::StatusOr<std::unique_ptr<CpuForwardPass>> Create(const ModelConfig& config,
                                                       std::shared_ptr<const ModelWeights> weights,
                                                       ThreadPool* pool);

  const ModelConfig& config() const override { return config_; }
  int kv_k_width() const override;
  int kv_v_width() const override;
  absl::Status Forward(absl::Span<const ForwardItem> items, KvCache* cache, ExpertExecutor* experts,
                       std::vector<float>* logits) override;

 private:
  CpuForwardPass(const ModelConfig& c, std::shared_ptr<const ModelWeights> w, ThreadPool* pool);

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

#endif  // MOEMESH_CORE_ENGINE_CPU_FORWARD_PASS_H_
