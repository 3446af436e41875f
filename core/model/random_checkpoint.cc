#include "core/model/random_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/common/file_util.h"
#include "core/common/status_macros.h"
#include "core/model/safetensors.h"
#include "core/tensor/dtype.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

// bf16 values uniform in +-sqrt(3 / fan_in), from a counter hash on every
// core.
std::string RandomBf16(size_t n, float fan_in, uint64_t seed) {
  std::string bytes(n * 2, '\0');
  uint16_t* p = reinterpret_cast<uint16_t*>(bytes.data());
  const float a = std::sqrt(3.0f / fan_in);
  const int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([=] {
      for (size_t i = n * t / threads; i < n * (t + 1) / threads; ++i) {
        uint64_t z = (i + seed * 0x9E3779B97F4A7C15ull) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 31)) * 0x94D049BB133111EBull;
        const float u = static_cast<float>((z >> 40) & 0xFFFFFF) / 16777216.0f;  // [0, 1)
        p[i] = F32ToBf16((2 * u - 1) * a);
      }
    });
  }
  for (auto& th : pool) th.join();
  return bytes;
}

// The tensors of one checkpoint, random (Add) or ones (Ones, for norms),
// written with config.json at the end.
class Writer {
 public:
  Writer(std::string dir, uint64_t seed) : dir_(std::move(dir)), seed_(seed) {}

  // Whether `dir` holds this config's checkpoint already.
  bool Current(const std::string& config_text) const {
    absl::StatusOr<std::string> old = ReadFile(dir_ + "/config.json");
    return old.ok() && *old == config_text && SafetensorsFile::Open(dir_ + "/model.safetensors").ok();
  }
  void Add(const std::string& name, std::vector<int64_t> shape, float fan_in) {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    tensors_.push_back({name, DType::kBF16, std::move(shape), RandomBf16(n, fan_in, seed_++)});
  }
  void Ones(const std::string& name, int64_t n) {
    std::string bytes(static_cast<size_t>(n) * 2, '\0');
    for (int64_t i = 0; i < n; ++i) reinterpret_cast<uint16_t*>(bytes.data())[i] = F32ToBf16(1.0f);
    tensors_.push_back({name, DType::kBF16, {n}, std::move(bytes)});
  }
  // config.json last: a checkpoint cut short is never Current.
  absl::Status Write(const std::string& config_text) {
    MM_RETURN_IF_ERROR(WriteSafetensors(dir_ + "/model.safetensors", tensors_));
    return WriteFileAtomically(dir_ + "/config.json", config_text);
  }

 private:
  std::string dir_;
  uint64_t seed_;
  std::vector<TensorToWrite> tensors_;
};

absl::Status MakeDir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("cannot make ", dir, ": ", ec.message()));
  return absl::OkStatus();
}

absl::Status CheckPositive(std::initializer_list<int> values) {
  for (int v : values) {
    if (v <= 0) return absl::InvalidArgumentError("a random checkpoint's sizes must be positive");
  }
  return absl::OkStatus();
}

}  // namespace

RandomMoeShape MixtralShape(int layers) {
  return {"mixtral", layers, 4096, 32, 8, 128, 8, 2, 14336, 32000, 32768};
}
RandomMoeShape Qwen3MoeShape(int layers) {
  return {"qwen3_moe", layers, 2048, 32, 4, 128, 128, 8, 768, 151936, 40960};
}
RandomMlaShape DeepSeekV3Shape(int layers) {
  return {layers, 1, 7168, 128, 1536, 512, 128, 64, 128, 256, 8, 2048, 18432, 1, 129280};
}

absl::StatusOr<bool> WriteRandomCheckpoint(const RandomMoeShape& s, const std::string& dir, uint64_t seed) {
  if (s.model_type != "mixtral" && s.model_type != "qwen3_moe") {
    return absl::InvalidArgumentError("random MoE checkpoints are mixtral or qwen3_moe; got " + s.model_type);
  }
  MM_RETURN_IF_ERROR(CheckPositive({s.layers, s.hidden, s.heads, s.kv_heads, s.head_dim, s.experts, s.top_k,
                                    s.expert_width, s.vocab, s.max_positions}));
  if (s.heads % s.kv_heads != 0 || s.top_k > s.experts) {
    return absl::InvalidArgumentError("kv_heads must divide heads, and top_k be at most experts");
  }
  MM_RETURN_IF_ERROR(MakeDir(dir));
  nlohmann::json cfg = {{"model_type", s.model_type},       {"vocab_size", s.vocab},
                        {"hidden_size", s.hidden},          {"intermediate_size", s.expert_width},
                        {"moe_intermediate_size", s.expert_width}, {"num_hidden_layers", s.layers},
                        {"num_attention_heads", s.heads},   {"num_key_value_heads", s.kv_heads},
                        {"head_dim", s.head_dim},           {"num_local_experts", s.experts},
                        {"num_experts", s.experts},         {"num_experts_per_tok", s.top_k},
                        {"norm_topk_prob", true},           {"max_position_embeddings", s.max_positions},
                        {"rms_norm_eps", 1e-6},             {"tie_word_embeddings", false},
                        {"decoder_sparse_step", 1},         {"mlp_only_layers", nlohmann::json::array()}};
  const std::string cfg_text = cfg.dump(1);
  Writer w(dir, seed);
  if (w.Current(cfg_text)) return false;
  const int h = s.hidden, q = s.heads * s.head_dim, kv = s.kv_heads * s.head_dim;
  w.Add("model.embed_tokens.weight", {s.vocab, h}, 1.0f);
  w.Add("lm_head.weight", {s.vocab, h}, h);
  w.Ones("model.norm.weight", h);
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    w.Ones(p + "input_layernorm.weight", h);
    w.Ones(p + "post_attention_layernorm.weight", h);
    w.Add(p + "self_attn.q_proj.weight", {q, h}, h);
    w.Add(p + "self_attn.k_proj.weight", {kv, h}, h);
    w.Add(p + "self_attn.v_proj.weight", {kv, h}, h);
    w.Add(p + "self_attn.o_proj.weight", {h, q}, q);
    if (s.model_type == "qwen3_moe") {
      w.Ones(p + "self_attn.q_norm.weight", s.head_dim);
      w.Ones(p + "self_attn.k_norm.weight", s.head_dim);
    }
    w.Add(p + "mlp.gate.weight", {s.experts, h}, h);
    w.Add(p + "mlp.experts.gate_up_proj", {s.experts, 2 * s.expert_width, h}, h);
    w.Add(p + "mlp.experts.down_proj", {s.experts, h, s.expert_width}, s.expert_width);
  }
  MM_RETURN_IF_ERROR(w.Write(cfg_text));
  return true;
}

absl::StatusOr<bool> WriteRandomCheckpoint(const RandomMlaShape& s, const std::string& dir, uint64_t seed) {
  MM_RETURN_IF_ERROR(CheckPositive({s.layers, s.hidden, s.heads, s.q_lora, s.kv_lora, s.nope, s.rope, s.v_head,
                                    s.experts, s.top_k, s.expert_width, s.dense_width, s.vocab}));
  if (s.dense_layers < 0 || s.shared_experts < 0 || s.top_k > s.experts || s.experts % 8 != 0) {
    return absl::InvalidArgumentError(
        "dense layers and shared experts must not be negative, top_k at most experts, experts in 8 groups");
  }
  MM_RETURN_IF_ERROR(MakeDir(dir));
  nlohmann::json cfg = {{"model_type", "deepseek_v3"},
                        {"vocab_size", s.vocab},
                        {"hidden_size", s.hidden},
                        {"intermediate_size", s.dense_width},
                        {"moe_intermediate_size", s.expert_width},
                        {"num_hidden_layers", s.layers},
                        {"first_k_dense_replace", s.dense_layers},
                        {"num_attention_heads", s.heads},
                        {"num_key_value_heads", s.heads},
                        {"q_lora_rank", s.q_lora},
                        {"kv_lora_rank", s.kv_lora},
                        {"qk_nope_head_dim", s.nope},
                        {"qk_rope_head_dim", s.rope},
                        {"v_head_dim", s.v_head},
                        {"n_routed_experts", s.experts},
                        {"n_shared_experts", s.shared_experts},
                        {"num_experts_per_tok", s.top_k},
                        {"n_group", 8},
                        {"topk_group", 4},
                        {"norm_topk_prob", true},
                        {"routed_scaling_factor", 2.5},
                        {"rope_interleave", true},
                        {"max_position_embeddings", 163840},
                        {"rope_parameters",
                         {{"rope_type", "yarn"},
                          {"rope_theta", 10000.0},
                          {"factor", 40.0},
                          {"original_max_position_embeddings", 4096},
                          {"beta_fast", 32.0},
                          {"beta_slow", 1.0},
                          {"mscale", 1.0},
                          {"mscale_all_dim", 1.0}}},
                        {"rms_norm_eps", 1e-6},
                        {"tie_word_embeddings", false}};
  const std::string cfg_text = cfg.dump(1);
  Writer w(dir, seed);
  if (w.Current(cfg_text)) return false;
  const int h = s.hidden, qk = s.nope + s.rope;
  w.Add("model.embed_tokens.weight", {s.vocab, h}, 1.0f);
  w.Add("lm_head.weight", {s.vocab, h}, h);
  w.Ones("model.norm.weight", h);
  auto ffn = [&](const std::string& p, int width) {
    w.Add(p + "gate_proj.weight", {width, h}, h);
    w.Add(p + "up_proj.weight", {width, h}, h);
    w.Add(p + "down_proj.weight", {h, width}, width);
  };
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    w.Ones(p + "input_layernorm.weight", h);
    w.Ones(p + "post_attention_layernorm.weight", h);
    w.Add(p + "self_attn.q_a_proj.weight", {s.q_lora, h}, h);
    w.Ones(p + "self_attn.q_a_layernorm.weight", s.q_lora);
    w.Add(p + "self_attn.q_b_proj.weight", {static_cast<int64_t>(s.heads) * qk, s.q_lora}, s.q_lora);
    w.Add(p + "self_attn.kv_a_proj_with_mqa.weight", {s.kv_lora + s.rope, h}, h);
    w.Ones(p + "self_attn.kv_a_layernorm.weight", s.kv_lora);
    w.Add(p + "self_attn.kv_b_proj.weight", {static_cast<int64_t>(s.heads) * (s.nope + s.v_head), s.kv_lora},
          s.kv_lora);
    w.Add(p + "self_attn.o_proj.weight", {h, static_cast<int64_t>(s.heads) * s.v_head}, s.heads * s.v_head);
    if (l < s.dense_layers) {
      ffn(p + "mlp.", s.dense_width);
      continue;
    }
    w.Add(p + "mlp.gate.weight", {s.experts, h}, h);
    w.Add(p + "mlp.gate.e_score_correction_bias", {s.experts}, 1e4f);  // small, as trained ones are
    if (s.shared_experts > 0) ffn(p + "mlp.shared_experts.", s.expert_width * s.shared_experts);
    for (int e = 0; e < s.experts; ++e) ffn(absl::StrCat(p, "mlp.experts.", e, "."), s.expert_width);
  }
  MM_RETURN_IF_ERROR(w.Write(cfg_text));
  return true;
}

}  // namespace moemesh
