#ifndef MOEMESH_CORE_MODEL_CONFIG_H_
#define MOEMESH_CORE_MODEL_CONFIG_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moemesh {

enum class Architecture { kMixtral, kQwen2Moe, kQwen3Moe, kOlmoe, kDeepseekV3 };

// "mixtral", "qwen2_moe", ... (the config.json model_type).
absl::string_view ArchitectureName(Architecture a);

enum class RopeType { kDefault, kLinear, kDynamic, kYarn, kLlama3 };

// Rotary embedding parameters, normalised from any of the three spellings in
// config.json: `rope_scaling.type`, `rope_scaling.rope_type`, or transformers
// 5's `rope_parameters` (plus a top-level `rope_theta`).
struct RopeConfig {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;
  int dim = 0;                 // rotated dimensions per head
  double factor = 1.0;         // linear, dynamic, yarn, llama3
  int max_position_embeddings = 0;
  int original_max_position_embeddings = 0;  // yarn, llama3
  // yarn
  double attention_factor = 0.0;  // 0: derived from factor and mscale
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 0.0;
  double mscale_all_dim = 0.0;
  bool truncate = true;
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  // DeepSeek: rotary pairs are interleaved (x0,x1),(x2,x3)...
  bool interleaved = false;
};

enum class ScoringFunc { kSoftmax, kSigmoid };

// Two gating extensions, both off by default so stock checkpoints keep their
// exact behaviour.
struct GatingExtensions {
  // > 0: weights become softmax(selected router logits / T).
  double temperature = 0.0;
  // dynamic_k_max > 0: each token activates the smallest k in [k_min, k_max]
  // whose cumulative gate probability reaches `dynamic_k_p`.
  int dynamic_k_min = 0;
  int dynamic_k_max = 0;
  double dynamic_k_p = 0.0;
};

// Everything the engine needs from a Hugging Face config.json.
// A checkpoint quantized before it was published (config.json's
// quantization_config): which layout its linear layers' tensors take.
struct CheckpointQuantization {
  enum class Method { kNone, kGptq, kAwq, kFp8 };
  Method method = Method::kNone;
  int bits = 0;
  int group_size = 0;
  // FP8 (DeepSeek-V3): E4M3 weights with a weight_scale_inv a block of
  // block_rows x block_cols (weight_block_size).
  int block_rows = 0, block_cols = 0;
  // GPTQ's checkpoint_format "gptq" (v1) stores zero points minus one;
  // "gptq_v2" as they are.
  bool gptq_v2 = false;
  // GPTQ's desc_act (act-order): each layer's g_idx says each input's
  // group; such layers load dequantized to BF16.
  bool act_order = false;
};

struct ModelConfig {
  Architecture arch = Architecture::kMixtral;
  CheckpointQuantization quantization;
  int vocab_size = 0;
  int hidden_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;        // q/k/v head size (MLA: unused, see below)
  int max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool attention_bias = false;   // q/k/v (and o for some) biases
  bool o_proj_bias = false;
  bool qk_norm_per_head = false; // Qwen3-MoE: RMSNorm over head_dim
  bool qk_norm_full = false;     // OLMoE: RMSNorm over all heads
  double clip_qkv = 0.0;         // OLMoE, 0 = off
  // Per layer: 0 = full attention, else the window (keys kv > q - window).
  std::vector<int> sliding_window;

  RopeConfig rope;

  // MoE.
  int num_experts = 0;
  int num_experts_per_tok = 0;
  int moe_intermediate_size = 0;  // routed expert FFN width
  int intermediate_size = 0;      // dense layers' FFN width
  bool norm_topk_prob = false;
  ScoringFunc scoring = ScoringFunc::kSoftmax;
  int n_group = 1;
  int topk_group = 1;
  double routed_scaling_factor = 1.0;
  int shared_expert_intermediate_size = 0;  // 0: no shared expert
  bool shared_expert_gate = false;          // Qwen2-MoE's sigmoid gate
  std::vector<bool> is_moe_layer;           // per layer
  GatingExtensions gating;

  // DeepSeek-V3 multi-head latent attention.
  bool mla = false;
  int q_lora_rank = 0;  // 0: a plain q_proj
  int kv_lora_rank = 0;
  int qk_nope_head_dim = 0;
  int qk_rope_head_dim = 0;
  int v_head_dim = 0;

  std::vector<int> eos_token_ids;
  int bos_token_id = -1;

  // Softmax scale of attention scores.
  double AttentionScale() const;
  // Width of one routed expert's FFN.
  int ExpertWidth() const { return moe_intermediate_size; }
  // Checks internal consistency; INVALID_ARGUMENT says what is wrong.
  absl::Status Validate() const;
  // Longest prompt + generation the model supports: max_position_embeddings,
  // stretched by linear and dynamic rope scaling (as vLLM derives it) and
  // at least original * factor for yarn.
  int context_length() const;
};

// Parses config.json text. `source` names the file in error messages.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text,
                                             absl::string_view source);
// Reads and parses <dir>/config.json, and eos ids from
// <dir>/generation_config.json when present.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

}  // namespace moemesh

#endif  // MOEMESH_CORE_MODEL_CONFIG_H_
