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

// The forward pass of a MoE decoder on CPU: embeddings, the decoder layers
// (RunDecoderLayers over this pass's DecoderOps: attention over the paged KV
// cache, gating, experts through an ExpertExecutor), LM head. One step may
// mix sequences. Not thread-safe; the thread pool parallelises inside each
// kernel.
class CpuForwardPass : public ForwardPass {
 public:
  // `weights` must hold the dense part (load_dense). With `micro_batches`
  // 2, a step of two or more sequences whose experts take two batches at
  // once (ExpertExecutor::lanes(), remote workers) runs as two
  // micro-batches in ping-pong (RunDecoderLanes); 1: never.
  static absl::StatusOr<std::unique_ptr<CpuForwardPass>> Create(const ModelConfig& config,
                                                       std::shared_ptr<const ModelWeights> weights,
                                                       ThreadPool* pool, int micro_batches = 1);
  ~CpuForwardPass() override;

  const ModelConfig& config() const override { return config_; }
  absl::Status Forward(absl::Span<const ForwardItem> items, KvCache* cache, ExpertExecutor* experts,
                       std::vector<float>* logits) override;

 private:
  // Where a row of the step's activations comes from.
  struct RowInfo {
    int item;
    int position;
    std::vector<float> cos, sin;  // rotary angles of this position
  };
  // The DecoderOps of one micro-batch: a run of the step's rows.
  class Lane;

  CpuForwardPass(const ModelConfig& c, std::shared_ptr<const ModelWeights> w, ThreadPool* pool, int micro_batches);

  ModelConfig config_;
  std::shared_ptr<const ModelWeights> w_;
  ThreadPool* pool_;
  int micro_batches_;
  Rope rope_;
  // Latent attention: kv_b_proj in fp32, per layer [heads * (nope + v), kv_lora].
  std::vector<std::vector<float>> kv_b_f32_;
  std::vector<float> hidden_;  // the step's hidden rows
  std::vector<std::unique_ptr<Lane>> lanes_;  // kept for their scratch
  // The step in flight.
  absl::Span<const ForwardItem> items_;
  KvCache* cache_ = nullptr;
  std::vector<RowInfo> rows_;
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_ENGINE_CPU_FORWARD_PASS_H_
