#ifndef MOEMESH_CORE_MODEL_RANDOM_CHECKPOINT_H_
#define MOEMESH_CORE_MODEL_RANDOM_CHECKPOINT_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moemesh {

// Random-weight checkpoints in Hugging Face's layout at real models' layer
// shapes (with as many layers as asked), for benchmarks on hardware that
// has no copy of the real weights: config.json and model.safetensors, bf16
// weights uniform with variance 1 / fan_in from a counter hash (fast for
// tens of GB, never zero), norms at 1.

// Mixtral and Qwen3-MoE: GQA attention, routed experts in transformers 5's
// fused layout (mlp.experts.gate_up_proj / down_proj).
struct RandomMoeShape {
  std::string model_type;  // "mixtral" or "qwen3_moe"
  int layers, hidden, heads, kv_heads, head_dim, experts, top_k, expert_width, vocab;
  int max_positions = 4096;  // the context the mesh will take
};
RandomMoeShape MixtralShape(int layers);   // Mixtral-8x7B's layers
RandomMoeShape Qwen3MoeShape(int layers);  // Qwen3-30B-A3B's layers

// DeepSeek-V3: latent attention (YaRN), the first `dense_layers` layers
// dense, the rest MoE with shared experts, in transformers' per-expert
// layout.
struct RandomMlaShape {
  int layers, dense_layers, hidden, heads, q_lora, kv_lora, nope, rope, v_head, experts, top_k, expert_width,
      dense_width, shared_experts, vocab;
};
RandomMlaShape DeepSeekV3Shape(int layers);

// Writes the checkpoint into `dir` (made if missing) unless it already
// holds this shape's (same config.json, a readable model.safetensors):
// true if it wrote. `seed` picks the weights.
absl::StatusOr<bool> WriteRandomCheckpoint(const RandomMoeShape& s, const std::string& dir, uint64_t seed = 1);
absl::StatusOr<bool> WriteRandomCheckpoint(const RandomMlaShape& s, const std::string& dir, uint64_t seed = 101);

}  // namespace moemesh

#endif  // MOEMESH_CORE_MODEL_RANDOM_CHECKPOINT_H_
