#ifndef MOEMESH_CORE_MODEL_WEIGHTS_H_
#define MOEMESH_CORE_MODEL_WEIGHTS_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/config.h"
#include "core/model/safetensors.h"
#include "core/quant/quantize.h"
#include "core/tensor/matrix_view.h"

namespace moemesh {

class ThreadPool;

// A weight in its checkpoint dtype. `data` points into the memory-mapped
// checkpoint (no copy); the Checkpoint must outlive it.
using Matrix = MatrixView;

// A SwiGLU FFN: down(silu(gate x) * up x).
struct FfnWeights {
  Matrix gate;  // [width, hidden]
  Matrix up;    // [width, hidden]
  Matrix down;  // [hidden, width]
  bool empty() const { return gate.empty(); }
};

struct AttentionWeights {
  // Standard grouped-query attention.
  Matrix q, k, v;
  std::vector<float> q_bias, k_bias, v_bias;
  std::vector<float> q_norm, k_norm;  // Qwen3 (per head) or OLMoE (full)
  // DeepSeek-V3 latent attention.
  Matrix q_a, q_b, kv_a, kv_b;
  std::vector<float> q_a_bias, kv_a_bias;
  std::vector<float> q_a_norm, kv_a_norm;
  // Both.
  Matrix o;
  std::vector<float> o_bias;
};

// Everything of a layer except its routed experts.
struct LayerWeights {
  std::vector<float> input_norm;
  std::vector<float> post_attention_norm;
  AttentionWeights attn;
  bool moe = false;
  FfnWeights dense;                      // when !moe
  Matrix router;                         // [experts, hidden]
  std::vector<float> score_correction_bias;  // DeepSeek-V3
  FfnWeights shared_expert;              // empty if none
  Matrix shared_expert_gate;             // [1, hidden], Qwen2-MoE
};

// The routed experts a process holds, keyed by (layer, expert).
class ExpertWeightsTable {
 public:
  void Add(int layer, int expert, FfnWeights w) { table_[{layer, expert}] = w; }
  // nullptr if this process does not hold the expert.
  const FfnWeights* Find(int layer, int expert) const {
    auto it = table_.find({layer, expert});
    return it == table_.end() ? nullptr : &it->second;
  }
  size_t size() const { return table_.size(); }

 private:
  std::map<std::pair<int, int>, FfnWeights> table_;
};

struct ModelWeights {
  std::shared_ptr<const Checkpoint> checkpoint;  // keeps the mmaps alive
  Matrix embed;    // [vocab, hidden]
  Matrix lm_head;  // [vocab, hidden]; the embedding when tied
  std::vector<float> final_norm;
  std::vector<LayerWeights> layers;  // empty when load_dense was false
  ExpertWeightsTable experts;
  // What quantized weights' views point into (WeightLoadOptions::quantize_experts).
  std::vector<std::shared_ptr<const QuantizedMatrix>> quantized;
};

struct WeightLoadOptions {
  // Embeddings, attention, norms, gates, dense and shared FFNs, LM head.
  bool load_dense = true;
  // Which routed experts to map; null loads all.
  std::function<bool(int layer, int expert)> load_expert;
  // Routed experts quantized as they load (kind kNone: as stored), on
  // `pool`'s threads where given.
  QuantSpec quantize_experts;
  // Every BF16 projection but the routers' gates (and DeepSeek-V3's kv_b,
  // held in f32 by the absorbed attention) multiplies bf16-rounded inputs on
  // the CPU (MatrixView::bf16_inputs), as a GPU does.
  bool bf16_inputs = false;
  ThreadPool* pool = nullptr;
};

// Maps the checkpoint's tensors (hub names of each architecture) and checks
// every shape against `config`. Errors name the file and the tensor.
absl::StatusOr<ModelWeights> LoadWeights(std::shared_ptr<const Checkpoint> checkpoint,
                                         const ModelConfig& config,
                                         const WeightLoadOptions& options = {});

}  // namespace moemesh

#endif  // MOEMESH_CORE_MODEL_WEIGHTS_H_
