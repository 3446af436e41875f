#include "core/model/config.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/common/file_util.h"
#include "core/common/status_macros.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

using Json = nlohmann::json;

// Small typed accessors that turn JSON type mismatches into clear errors.
class Reader {
 public:
  Reader(const Json& j, absl::string_view source) : j_(j), source_(source) {}

  bool Has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }

  absl::StatusOr<int> Int(const char* key, std::optional<int> def = std::nullopt) const {
    if (!Has(key)) return Missing(key, def);
    const Json& v = j_.at(key);
    if (!v.is_number_integer()) return TypeError(key, "an integer");
    return v.get<int>();
  }
  absl::StatusOr<double> Double(const char* key, std::optional<double> def = std::nullopt) const {
    if (!Has(key)) return Missing(key, def);
    const Json& v = j_.at(key);
    if (!v.is_number()) return TypeError(key, "a number");
    return v.get<double>();
  }
  absl::StatusOr<bool> Bool(const char* key, std::optional<bool> def = std::nullopt) const {
    if (!Has(key)) return Missing(key, def);
    const Json& v = j_.at(key);
    if (!v.is_boolean()) return TypeError(key, "true or false");
    return v.get<bool>();
  }
  absl::StatusOr<std::string> String(const char* key,
                                     std::optional<std::string> def = std::nullopt) const {
    if (!Has(key)) return Missing(key, def);
    const Json& v = j_.at(key);
    if (!v.is_string()) return TypeError(key, "a string");
    return v.get<std::string>();
  }
  // An int list, or a single int read as a one-element list.
  absl::StatusOr<std::vector<int>> IntList(const char* key) const {
    std::vector<int> out;
    if (!Has(key)) return out;
    const Json& v = j_.at(key);
    if (v.is_number_integer()) return std::vector<int>{v.get<int>()};
    if (!v.is_array()) return TypeError(key, "a list of integers");
    for (const Json& e : v) {
      if (!e.is_number_integer()) return TypeError(key, "a list of integers");
      out.push_back(e.get<int>());
    }
    return out;
  }
  // The first key present among `keys`.
  absl::StatusOr<int> IntAny(std::initializer_list<const char*> keys,
                             std::optional<int> def = std::nullopt) const {
    for (const char* k : keys) {
      if (Has(k)) return Int(k);
    }
    if (def) return *def;
    return absl::InvalidArgumentError(absl::StrCat(
        source_, ": missing required field \"", *keys.begin(), "\""));
  }

 private:
  template <typename T>
  absl::StatusOr<T> Missing(const char* key, const std::optional<T>& def) const {
    if (def) return *def;
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": missing required field \"", key, "\""));
  }
  absl::Status TypeError(const char* key, const char* what) const {
    return absl::InvalidArgumentError(absl::StrCat(
        source_, ": field \"", key, "\" must be ", what, ", got ", j_.at(key).dump()));
  }

  const Json& j_;
  std::string source_;
};

absl::StatusOr<Architecture> DetectArchitecture(const Json& j, absl::string_view source) {
  std::string type;
  if (j.contains("model_type") && j["model_type"].is_string()) {
    type = j["model_type"].get<std::string>();
  }
  struct Known {
    const char* model_type;
    const char* class_prefix;
    Architecture arch;
  };
  static const Known kKnown[] = {
      {"mixtral", "Mixtral", Architecture::kMixtral},
      {"qwen2_moe", "Qwen2Moe", Architecture::kQwen2Moe},
      {"qwen3_moe", "Qwen3Moe", Architecture::kQwen3Moe},
      {"olmoe", "Olmoe", Architecture::kOlmoe},
      {"deepseek_v3", "DeepseekV3", Architecture::kDeepseekV3},
  };
  for (const Known& k : kKnown) {
    if (type == k.model_type) return k.arch;
  }
  if (type.empty() && j.contains("architectures") && j["architectures"].is_array() &&
      !j["architectures"].empty() && j["architectures"][0].is_string()) {
    std::string cls = j["architectures"][0].get<std::string>();
    for (const Known& k : kKnown) {
      if (cls.rfind(k.class_prefix, 0) == 0) return k.arch;
    }
    type = cls;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      source, ": unsupported architecture \"", type.empty() ? "(no model_type)" : type,
      "\"; supported model_type values: mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v3 "
      "(DeepSeek-R1 checkpoints are deepseek_v3)"));
}

absl::Status ParseRope(const Json& j, absl::string_view source, double default_theta,
                       ModelConfig* c) {
  Reader top(j, source);
  RopeConfig& r = c->rope;
  // transformers 5 writes rope_parameters; older files rope_scaling + rope_theta.
  const Json* params = nullptr;
  if (top.Has("rope_parameters")) {
    params = &j["rope_parameters"];
  } else if (top.Has("rope_scaling")) {
    params = &j["rope_scaling"];
  }
  MM_ASSIGN_OR_RETURN(r.theta, top.Double("rope_theta", default_theta));
  r.max_position_embeddings = c->max_position_embeddings;
  r.original_max_position_embeddings = c->max_position_embeddings;
  if (params == nullptr) return absl::OkStatus();
  if (!params->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": rope parameters must be an object"));
  }
  std::string where = absl::StrCat(source, " (rope parameters)");
  Reader p(*params, where);
  std::string type = "default";
  if (p.Has("rope_type")) {
    MM_ASSIGN_OR_RETURN(type, p.String("rope_type"));
  } else if (p.Has("type")) {
    MM_ASSIGN_OR_RETURN(type, p.String("type"));
  }
  MM_ASSIGN_OR_RETURN(r.theta, p.Double("rope_theta", r.theta));
  if (type == "default") {
    r.type = RopeType::kDefault;
    return absl::OkStatus();
  } else if (type == "linear") {
    r.type = RopeType::kLinear;
  } else if (type == "dynamic") {
    r.type = RopeType::kDynamic;
  } else if (type == "yarn") {
    r.type = RopeType::kYarn;
  } else if (type == "llama3") {
    r.type = RopeType::kLlama3;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": unsupported rope type \"", type,
        "\" (supported: default, linear, dynamic, yarn, llama3)"));
  }
  if (r.type == RopeType::kYarn && !p.Has("factor")) {
    // transformers derives the factor from the two lengths.
    MM_ASSIGN_OR_RETURN(int orig, p.Int("original_max_position_embeddings"));
    r.factor = static_cast<double>(c->max_position_embeddings) / orig;
  } else {
    MM_ASSIGN_OR_RETURN(r.factor, p.Double("factor"));
  }
  int orig_default = c->max_position_embeddings;
  if (top.Has("original_max_position_embeddings")) {
    MM_ASSIGN_OR_RETURN(orig_default, top.Int("original_max_position_embeddings"));
  }
  MM_ASSIGN_OR_RETURN(r.original_max_position_embeddings,
                      p.Int("original_max_position_embeddings", orig_default));
  MM_ASSIGN_OR_RETURN(r.attention_factor, p.Double("attention_factor", 0.0));
  MM_ASSIGN_OR_RETURN(r.beta_fast, p.Double("beta_fast", 32.0));
  MM_ASSIGN_OR_RETURN(r.beta_slow, p.Double("beta_slow", 1.0));
  MM_ASSIGN_OR_RETURN(r.mscale, p.Double("mscale", 0.0));
  MM_ASSIGN_OR_RETURN(r.mscale_all_dim, p.Double("mscale_all_dim", 0.0));
  MM_ASSIGN_OR_RETURN(r.truncate, p.Bool("truncate", true));
  MM_ASSIGN_OR_RETURN(r.low_freq_factor, p.Double("low_freq_factor", 1.0));
  MM_ASSIGN_OR_RETURN(r.high_freq_factor, p.Double("high_freq_factor", 4.0));
  if (r.factor <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": factor must be positive"));
  }
  return absl::OkStatus();
}

// Qwen-style: MoE unless listed in mlp_only_layers or off the sparse step.
absl::Status QwenMoeLayers(const Reader& r, ModelConfig* c) {
  MM_ASSIGN_OR_RETURN(int step, r.Int("decoder_sparse_step", 1));
  MM_ASSIGN_OR_RETURN(std::vector<int> mlp_only, r.IntList("mlp_only_layers"));
  if (step <= 0) return absl::InvalidArgumentError("decoder_sparse_step must be positive");
  c->is_moe_layer.assign(c->num_layers, false);
  for (int i = 0; i < c->num_layers; ++i) {
    bool listed = std::find(mlp_only.begin(), mlp_only.end(), i) != mlp_only.end();
    c->is_moe_layer[i] = !listed && c->num_experts > 0 && (i + 1) % step == 0;
  }
  return absl::OkStatus();
}

// layer_types (transformers 5) wins; otherwise `fallback(i)` says whether
// layer i slides.
absl::Status SlidingLayers(const Json& j, const Reader& r, int window,
                           const std::function<bool(int)>& fallback, ModelConfig* c) {
  c->sliding_window.assign(c->num_layers, 0);
  if (window <= 0) return absl::OkStatus();
  if (r.Has("layer_types")) {
    const Json& lt = j["layer_types"];
    if (!lt.is_array() || static_cast<int>(lt.size()) != c->num_layers) {
      return absl::InvalidArgumentError("layer_types must list one entry per layer");
    }
    for (int i = 0; i < c->num_layers; ++i) {
      if (!lt[i].is_string()) return absl::InvalidArgumentError("layer_types entries must be strings");
      std::string t = lt[i].get<std::string>();
      if (t == "sliding_attention") {
        c->sliding_window[i] = window;
      } else if (t != "full_attention") {
        return absl::InvalidArgumentError(absl::StrCat("unsupported layer type \"", t, "\""));
      }
    }
    return absl::OkStatus();
  }
  for (int i = 0; i < c->num_layers; ++i) c->sliding_window[i] = fallback(i) ? window : 0;
  return absl::OkStatus();
}

// quantization_config: 4-bit GPTQ (groups along the input; act-order too)
// and AWQ (GEMM layout, zero points) are read; anything else is refused here,
// before any weight loads.
absl::Status ParseQuantization(const Json& j, absl::string_view source, CheckpointQuantization* q) {
  if (!j.contains("quantization_config") || j.at("quantization_config").is_null()) return absl::OkStatus();
  const Json& qc = j.at("quantization_config");
  const std::string where = absl::StrCat(source, ": quantization_config");
  if (!qc.is_object()) return absl::InvalidArgumentError(where + " must be an object");
  Reader r(qc, where);
  MM_ASSIGN_OR_RETURN(std::string method, r.String("quant_method"));
  if (method == "fp8") {
    q->method = CheckpointQuantization::Method::kFp8;
    MM_ASSIGN_OR_RETURN(std::vector<int> block, r.IntList("weight_block_size"));
    MM_ASSIGN_OR_RETURN(std::string activations, r.String("activation_scheme", "dynamic"));
    MM_ASSIGN_OR_RETURN(std::string fmt, r.String("fmt", "e4m3"));
    if (block.size() != 2 || block[0] < 1 || block[1] < 16 || (block[1] & (block[1] - 1)) != 0) {
      return absl::InvalidArgumentError(
          where + ".weight_block_size must be [rows, columns], columns a power of two of 16 or more (DeepSeek-V3: "
                  "[128, 128]); per-tensor FP8 is not read yet");
    }
    if (activations != "dynamic" || fmt != "e4m3") {
      return absl::InvalidArgumentError(absl::StrCat(where, ": activation_scheme \"", activations, "\", fmt \"", fmt,
                                                     "\" (dynamic e4m3 is read)"));
    }
    q->bits = 8;
    q->block_rows = block[0];
    q->block_cols = block[1];
    return absl::OkStatus();
  }
  if (method == "gptq") {
    q->method = CheckpointQuantization::Method::kGptq;
  } else if (method == "awq") {
    q->method = CheckpointQuantization::Method::kAwq;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(where, ".quant_method \"", method,
                                                   "\" is not read (supported: gptq, awq, fp8)"));
  }
  MM_ASSIGN_OR_RETURN(q->bits, r.IntAny({"bits", "w_bit"}));
  MM_ASSIGN_OR_RETURN(q->group_size, r.IntAny({"group_size", "q_group_size"}));
  if (q->bits != 4) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", q->bits, "-bit ", method, " (4-bit is read)"));
  }
  if (q->group_size != 32 && q->group_size != 64 && q->group_size != 128) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".group_size ", q->group_size,
                                                   " (groups of 32, 64 or 128 input columns are read)"));
  }
  if (q->method == CheckpointQuantization::Method::kGptq) {
    MM_ASSIGN_OR_RETURN(q->act_order, r.Bool("desc_act", false));
    MM_ASSIGN_OR_RETURN(std::string format, r.String("checkpoint_format", "gptq"));
    if (format != "gptq" && format != "gptq_v2") {
      return absl::InvalidArgumentError(absl::StrCat(where, ".checkpoint_format \"", format,
                                                     "\" (gptq or gptq_v2 are read)"));
    }
    q->gptq_v2 = format == "gptq_v2";
  } else {
    MM_ASSIGN_OR_RETURN(std::string version, r.String("version", "gemm"));
    MM_ASSIGN_OR_RETURN(bool zero_point, r.Bool("zero_point", true));
    if (absl::AsciiStrToLower(version) != "gemm" || !zero_point) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": AWQ version \"", version, "\"",
                                                     zero_point ? "" : " without zero points",
                                                     " (the GEMM layout with zero points is read)"));
    }
  }
  return absl::OkStatus();
}

absl::Status ParseArchitecture(const Json& j, absl::string_view source, ModelConfig* c) {
  Reader r(j, source);
  switch (c->arch) {
    case Architecture::kMixtral: {
      MM_ASSIGN_OR_RETURN(c->num_experts, r.IntAny({"num_local_experts", "num_experts"}));
      MM_ASSIGN_OR_RETURN(c->num_experts_per_tok, r.Int("num_experts_per_tok"));
      MM_ASSIGN_OR_RETURN(c->moe_intermediate_size, r.Int("intermediate_size"));
      c->intermediate_size = c->moe_intermediate_size;
      c->norm_topk_prob = true;
      c->is_moe_layer.assign(c->num_layers, true);
      int window = 0;
      if (r.Has("sliding_window")) {
        MM_ASSIGN_OR_RETURN(window, r.Int("sliding_window"));
      }
      return SlidingLayers(j, r, window, [](int) { return true; }, c);
    }
    case Architecture::kQwen2Moe: {
      MM_ASSIGN_OR_RETURN(c->num_experts, r.IntAny({"num_experts", "num_local_experts"}));
      MM_ASSIGN_OR_RETURN(c->num_experts_per_tok, r.Int("num_experts_per_tok"));
      MM_ASSIGN_OR_RETURN(c->moe_intermediate_size, r.Int("moe_intermediate_size"));
      MM_ASSIGN_OR_RETURN(c->intermediate_size, r.Int("intermediate_size"));
      MM_ASSIGN_OR_RETURN(c->norm_topk_prob, r.Bool("norm_topk_prob", false));
      MM_ASSIGN_OR_RETURN(c->shared_expert_intermediate_size,
                          r.Int("shared_expert_intermediate_size", 0));
      c->shared_expert_gate = c->shared_expert_intermediate_size > 0;
      MM_ASSIGN_OR_RETURN(c->attention_bias, r.Bool("qkv_bias", true));
      MM_RETURN_IF_ERROR(QwenMoeLayers(r, c));
      MM_ASSIGN_OR_RETURN(bool use_sw, r.Bool("use_sliding_window", false));
      int window = 0;
      if (use_sw && r.Has("sliding_window")) {
        MM_ASSIGN_OR_RETURN(window, r.Int("sliding_window"));
      }
      MM_ASSIGN_OR_RETURN(int max_window_layers, r.Int("max_window_layers", 28));
      return SlidingLayers(j, r, window,
                           [&](int i) { return (i + 1) % 2 == 1 && i < max_window_layers; }, c);
    }
    case Architecture::kQwen3Moe: {
      MM_ASSIGN_OR_RETURN(c->num_experts, r.IntAny({"num_experts", "num_local_experts"}));
      MM_ASSIGN_OR_RETURN(c->num_experts_per_tok, r.Int("num_experts_per_tok"));
      MM_ASSIGN_OR_RETURN(c->moe_intermediate_size, r.Int("moe_intermediate_size"));
      MM_ASSIGN_OR_RETURN(c->intermediate_size, r.Int("intermediate_size"));
      MM_ASSIGN_OR_RETURN(c->norm_topk_prob, r.Bool("norm_topk_prob", false));
      MM_ASSIGN_OR_RETURN(c->attention_bias, r.Bool("attention_bias", false));
      c->o_proj_bias = c->attention_bias;
      c->qk_norm_per_head = true;
      MM_RETURN_IF_ERROR(QwenMoeLayers(r, c));
      MM_ASSIGN_OR_RETURN(bool use_sw, r.Bool("use_sliding_window", false));
      int window = 0;
      if (use_sw && r.Has("sliding_window")) {
        MM_ASSIGN_OR_RETURN(window, r.Int("sliding_window"));
      }
      return SlidingLayers(j, r, window, [](int) { return true; }, c);
    }
    case Architecture::kOlmoe: {
      MM_ASSIGN_OR_RETURN(c->num_experts, r.IntAny({"num_experts", "num_local_experts"}));
      MM_ASSIGN_OR_RETURN(c->num_experts_per_tok, r.Int("num_experts_per_tok"));
      MM_ASSIGN_OR_RETURN(c->moe_intermediate_size, r.Int("intermediate_size"));
      c->intermediate_size = c->moe_intermediate_size;
      MM_ASSIGN_OR_RETURN(c->norm_topk_prob, r.Bool("norm_topk_prob", false));
      MM_ASSIGN_OR_RETURN(c->attention_bias, r.Bool("attention_bias", false));
      c->o_proj_bias = c->attention_bias;
      MM_ASSIGN_OR_RETURN(c->clip_qkv, r.Double("clip_qkv", 0.0));
      c->qk_norm_full = true;
      c->is_moe_layer.assign(c->num_layers, true);
      c->sliding_window.assign(c->num_layers, 0);
      return absl::OkStatus();
    }
    case Architecture::kDeepseekV3: {
      MM_ASSIGN_OR_RETURN(c->num_experts, r.IntAny({"n_routed_experts", "num_local_experts"}));
      MM_ASSIGN_OR_RETURN(c->num_experts_per_tok, r.Int("num_experts_per_tok"));
      MM_ASSIGN_OR_RETURN(c->moe_intermediate_size, r.Int("moe_intermediate_size"));
      MM_ASSIGN_OR_RETURN(c->intermediate_size, r.Int("intermediate_size"));
      MM_ASSIGN_OR_RETURN(c->norm_topk_prob, r.Bool("norm_topk_prob", true));
      MM_ASSIGN_OR_RETURN(c->n_group, r.Int("n_group", 1));
      MM_ASSIGN_OR_RETURN(c->topk_group, r.Int("topk_group", 1));
      MM_ASSIGN_OR_RETURN(c->routed_scaling_factor, r.Double("routed_scaling_factor", 1.0));
      MM_ASSIGN_OR_RETURN(int n_shared, r.Int("n_shared_experts", 0));
      c->shared_expert_intermediate_size = n_shared * c->moe_intermediate_size;
      MM_ASSIGN_OR_RETURN(std::string scoring, r.String("scoring_func", "sigmoid"));
      if (scoring == "sigmoid") {
        c->scoring = ScoringFunc::kSigmoid;
      } else if (scoring == "softmax") {
        c->scoring = ScoringFunc::kSoftmax;
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": unsupported scoring_func \"", scoring, "\""));
      }
      MM_ASSIGN_OR_RETURN(int first_dense, r.Int("first_k_dense_replace", 0));
      c->is_moe_layer.assign(c->num_layers, false);
      for (int i = first_dense; i < c->num_layers; ++i) c->is_moe_layer[i] = true;
      MM_ASSIGN_OR_RETURN(c->attention_bias, r.Bool("attention_bias", false));
      c->o_proj_bias = c->attention_bias;
      c->mla = true;
      MM_ASSIGN_OR_RETURN(c->q_lora_rank, r.Int("q_lora_rank", 0));
      MM_ASSIGN_OR_RETURN(c->kv_lora_rank, r.Int("kv_lora_rank"));
      MM_ASSIGN_OR_RETURN(c->qk_nope_head_dim, r.Int("qk_nope_head_dim"));
      MM_ASSIGN_OR_RETURN(c->qk_rope_head_dim, r.Int("qk_rope_head_dim"));
      MM_ASSIGN_OR_RETURN(c->v_head_dim, r.Int("v_head_dim"));
      MM_ASSIGN_OR_RETURN(c->rope.interleaved, r.Bool("rope_interleave", true));
      c->head_dim = c->qk_nope_head_dim + c->qk_rope_head_dim;
      c->sliding_window.assign(c->num_layers, 0);
      return absl::OkStatus();
    }
  }
  return absl::InternalError("unhandled architecture");
}

double YarnMscale(double scale, double mscale) {
  if (scale <= 1) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

}  // namespace

absl::string_view ArchitectureName(Architecture a) {
  switch (a) {
    case Architecture::kMixtral: return "mixtral";
    case Architecture::kQwen2Moe: return "qwen2_moe";
    case Architecture::kQwen3Moe: return "qwen3_moe";
    case Architecture::kOlmoe: return "olmoe";
    case Architecture::kDeepseekV3: return "deepseek_v3";
  }
  return "?";
}

double ModelConfig::AttentionScale() const {
  double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  if (mla && rope.type != RopeType::kDefault && rope.mscale_all_dim != 0) {
    double m = YarnMscale(rope.factor, rope.mscale_all_dim);
    scale *= m * m;
  }
  return scale;
}

int ModelConfig::context_length() const {
  const double factor = rope.factor > 0 ? rope.factor : 1.0;
  switch (rope.type) {
    case RopeType::kLinear:
    case RopeType::kDynamic:
      return static_cast<int>(max_position_embeddings * factor);
    case RopeType::kYarn:
      return std::max(max_position_embeddings, static_cast<int>(rope.original_max_position_embeddings * factor));
    default:
      return max_position_embeddings;
  }
}

absl::Status ModelConfig::Validate() const {
  auto positive = [](int v, const char* name) -> absl::Status {
    if (v <= 0) return absl::InvalidArgumentError(absl::StrCat(name, " must be positive, got ", v));
    return absl::OkStatus();
  };
  MM_RETURN_IF_ERROR(positive(vocab_size, "vocab_size"));
  MM_RETURN_IF_ERROR(positive(hidden_size, "hidden_size"));
  MM_RETURN_IF_ERROR(positive(num_layers, "num_hidden_layers"));
  MM_RETURN_IF_ERROR(positive(num_heads, "num_attention_heads"));
  MM_RETURN_IF_ERROR(positive(num_kv_heads, "num_key_value_heads"));
  MM_RETURN_IF_ERROR(positive(head_dim, "head_dim"));
  if (num_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_attention_heads (", num_heads,
                                                   ") must be a multiple of num_key_value_heads (",
                                                   num_kv_heads, ")"));
  }
  if (rope.dim <= 0 || rope.dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("rotary dimension must be even and positive, got ", rope.dim));
  }
  bool any_moe = false;
  for (bool m : is_moe_layer) any_moe |= m;
  if (any_moe) {
    MM_RETURN_IF_ERROR(positive(num_experts, "number of experts"));
    MM_RETURN_IF_ERROR(positive(moe_intermediate_size, "expert intermediate size"));
    if (num_experts_per_tok <= 0 || num_experts_per_tok > num_experts) {
      return absl::InvalidArgumentError(absl::StrCat("num_experts_per_tok must be in [1, ",
                                                     num_experts, "], got ", num_experts_per_tok));
    }
    if (n_group <= 0 || num_experts % n_group != 0 || topk_group <= 0 || topk_group > n_group) {
      return absl::InvalidArgumentError(absl::StrCat(
          "n_group (", n_group, ") must divide the expert count (", num_experts,
          ") and topk_group (", topk_group, ") must be in [1, n_group]"));
    }
    if (n_group > 1 && num_experts / n_group < 2) {
      return absl::InvalidArgumentError("each expert group needs at least 2 experts");
    }
  }
  if (gating.temperature < 0) return absl::InvalidArgumentError("gating temperature must be >= 0");
  if (gating.dynamic_k_max > 0) {
    if (gating.dynamic_k_min < 1 || gating.dynamic_k_min > gating.dynamic_k_max ||
        gating.dynamic_k_max > num_experts) {
      return absl::InvalidArgumentError(absl::StrCat(
          "dynamic k needs 1 <= k_min <= k_max <= ", num_experts, ", got [",
          gating.dynamic_k_min, ", ", gating.dynamic_k_max, "]"));
    }
    if (!(gating.dynamic_k_p > 0 && gating.dynamic_k_p <= 1)) {
      return absl::InvalidArgumentError("dynamic k probability threshold must be in (0, 1]");
    }
  }
  if (mla) {
    MM_RETURN_IF_ERROR(positive(kv_lora_rank, "kv_lora_rank"));
    MM_RETURN_IF_ERROR(positive(v_head_dim, "v_head_dim"));
    MM_RETURN_IF_ERROR(positive(qk_rope_head_dim, "qk_rope_head_dim"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text, absl::string_view source) {
  Json j = Json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a valid JSON object"));
  }
  ModelConfig c;
  MM_ASSIGN_OR_RETURN(c.arch, DetectArchitecture(j, source));
  Reader r(j, source);
  MM_ASSIGN_OR_RETURN(c.vocab_size, r.Int("vocab_size"));
  MM_ASSIGN_OR_RETURN(c.hidden_size, r.Int("hidden_size"));
  MM_ASSIGN_OR_RETURN(c.num_layers, r.Int("num_hidden_layers"));
  MM_ASSIGN_OR_RETURN(c.num_heads, r.Int("num_attention_heads"));
  MM_ASSIGN_OR_RETURN(c.num_kv_heads, r.Int("num_key_value_heads", c.num_heads));
  if (c.num_heads <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": num_attention_heads must be positive"));
  }
  MM_ASSIGN_OR_RETURN(c.head_dim, r.Int("head_dim", c.hidden_size / c.num_heads));
  MM_ASSIGN_OR_RETURN(c.max_position_embeddings, r.Int("max_position_embeddings", 4096));
  MM_ASSIGN_OR_RETURN(c.rms_norm_eps, r.Double("rms_norm_eps", 1e-6));
  MM_ASSIGN_OR_RETURN(c.tie_word_embeddings, r.Bool("tie_word_embeddings", false));
  MM_ASSIGN_OR_RETURN(std::string act, r.String("hidden_act", "silu"));
  if (act != "silu") {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": unsupported hidden_act \"", act, "\" (supported: silu)"));
  }
  MM_RETURN_IF_ERROR(ParseArchitecture(j, source, &c));
  MM_RETURN_IF_ERROR(ParseQuantization(j, source, &c.quantization));
  double default_theta = c.arch == Architecture::kMixtral ? 1e6 : 1e4;
  MM_RETURN_IF_ERROR(ParseRope(j, source, default_theta, &c));
  if (c.mla) {
    c.rope.dim = c.qk_rope_head_dim;
  } else {
    MM_ASSIGN_OR_RETURN(double partial, r.Double("partial_rotary_factor", 1.0));
    c.rope.dim = static_cast<int>(c.head_dim * partial);
  }
  MM_ASSIGN_OR_RETURN(c.eos_token_ids, r.IntList("eos_token_id"));
  MM_ASSIGN_OR_RETURN(c.bos_token_id, r.Int("bos_token_id", -1));
  absl::Status valid = c.Validate();
  if (!valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", valid.message()));
  }
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir) {
  std::string path = JoinPath(dir, "config.json");
  MM_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  MM_ASSIGN_OR_RETURN(ModelConfig c, ParseModelConfig(text, path));
  std::string gen_path = JoinPath(dir, "generation_config.json");
  auto gen = ReadFile(gen_path);
  if (gen.ok()) {
    Json g = Json::parse(gen->begin(), gen->end(), nullptr, false);
    if (g.is_discarded() || !g.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(gen_path, ": not a valid JSON object"));
    }
    Reader gr(g, gen_path);
    if (gr.Has("eos_token_id")) {
      MM_ASSIGN_OR_RETURN(c.eos_token_ids, gr.IntList("eos_token_id"));
    }
  }
  return c;
}

}  // namespace moemesh
