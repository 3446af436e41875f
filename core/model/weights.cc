#include "core/model/weights.h"

#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/tensor/thread_pool.h"

namespace moemesh {
namespace {

class Loader {
 public:
  // Layers of a quantized checkpoint are repacked into `owned`'s matrices.
  Loader(const Checkpoint& ckpt, const ModelConfig& c, std::vector<std::shared_ptr<const QuantizedMatrix>>* owned)
      : ckpt_(ckpt), c_(c), owned_(owned) {}

  absl::StatusOr<Matrix> Mat(const std::string& name, int rows, int cols) const {
    if (c_.quantization.method != CheckpointQuantization::Method::kNone && absl::EndsWith(name, ".weight")) {
      const std::string layer = name.substr(0, name.size() - 7);
      if (ckpt_.Has(layer + ".qweight")) return Packed(layer, rows, cols);
      if (c_.quantization.method == CheckpointQuantization::Method::kFp8 && ckpt_.Has(name + "_scale_inv")) {
        return Fp8(name, rows, cols);
      }
    }
    MM_ASSIGN_OR_RETURN(TensorInfo t, ckpt_.GetFloat(name, {rows, cols}));
    return Matrix{t.dtype, rows, cols, t.data};
  }
  // An FP8 layer: E4M3 weights and their blocks' weight_scale_inv.
  absl::StatusOr<Matrix> Fp8(const std::string& name, int rows, int cols) const {
    const CheckpointQuantization& cq = c_.quantization;
    MM_ASSIGN_OR_RETURN(TensorInfo w, ckpt_.Get(name));
    MM_ASSIGN_OR_RETURN(TensorInfo s, ckpt_.Get(name + "_scale_inv"));
    const std::vector<int64_t> grid = {(rows + cq.block_rows - 1) / cq.block_rows,
                                       (cols + cq.block_cols - 1) / cq.block_cols};
    if (w.dtype != DType::kF8E4M3 || w.shape != std::vector<int64_t>{rows, cols}) {
      return absl::InvalidArgumentError(absl::StrCat(w.file, ": tensor ", name, " is ", DTypeName(w.dtype), " ",
                                                     w.ShapeString(), "; expected F8_E4M3 [", rows, ", ", cols, "]"));
    }
    if ((s.dtype != DType::kF32 && s.dtype != DType::kBF16) || s.shape != grid) {
      return absl::InvalidArgumentError(absl::StrCat(s.file, ": tensor ", s.name, " is ", DTypeName(s.dtype), " ",
                                                     s.ShapeString(), "; blocks of ", cq.block_rows, " x ",
                                                     cq.block_cols, " need F32 [", grid[0], ", ", grid[1], "]"));
    }
    absl::StatusOr<std::shared_ptr<const QuantizedMatrix>> m =
        FromFp8Blocks(rows, cols, cq.block_rows, cq.block_cols, w.data, s.data, s.dtype);
    if (!m.ok()) return absl::InvalidArgumentError(absl::StrCat(name, ": ", m.status().message()));
    owned_->push_back(*m);
    return (*m)->view();
  }
  // A GPTQ or AWQ layer: qweight, qzeros, scales (and GPTQ's g_idx, which
  // names the groups in order, or under act-order in any order: such a
  // layer is dequantized to BF16).
  absl::StatusOr<Matrix> Packed(const std::string& layer, int rows, int cols) const {
    const CheckpointQuantization& cq = c_.quantization;
    const bool gptq = cq.method == CheckpointQuantization::Method::kGptq;
    const int group = cq.group_size;
    if (rows % 8 != 0 || cols % 8 != 0 || cols % group != 0) {
      return absl::InvalidArgumentError(absl::StrCat(layer, ": ", rows, " x ", cols, " does not pack in 4 bits ",
                                                     "in groups of ", group));
    }
    auto get = [&](const char* suffix, const std::vector<int64_t>& shape, bool integer) -> absl::StatusOr<TensorInfo> {
      MM_ASSIGN_OR_RETURN(TensorInfo t, ckpt_.Get(layer + suffix));
      const bool dtype_ok = integer ? t.dtype == DType::kI32
                                    : (t.dtype == DType::kF16 || t.dtype == DType::kBF16 || t.dtype == DType::kF32);
      if (!dtype_ok || t.shape != shape) {
        TensorInfo want;
        want.shape = shape;
        return absl::InvalidArgumentError(absl::StrCat(t.file, ": tensor ", t.name, " is ", DTypeName(t.dtype), " ",
                                                       t.ShapeString(), "; this ", gptq ? "GPTQ" : "AWQ",
                                                       " layer needs ", integer ? "I32 " : "F16 ", want.ShapeString()));
      }
      return t;
    };
    PackedInt4 p;
    p.layout = gptq ? PackedInt4::Layout::kGptq : PackedInt4::Layout::kAwq;
    p.rows = rows;
    p.cols = cols;
    p.group = group;
    p.gptq_v2 = cq.gptq_v2;
    const int64_t groups = cols / group;
    MM_ASSIGN_OR_RETURN(TensorInfo qweight, get(".qweight", gptq ? std::vector<int64_t>{cols / 8, rows}
                                                                 : std::vector<int64_t>{cols, rows / 8},
                                                true));
    MM_ASSIGN_OR_RETURN(TensorInfo qzeros, get(".qzeros", {groups, rows / 8}, true));
    MM_ASSIGN_OR_RETURN(TensorInfo scales, get(".scales", {groups, rows}, false));
    p.qweight = static_cast<const int32_t*>(qweight.data);
    p.qzeros = static_cast<const int32_t*>(qzeros.data);
    p.scales = scales.data;
    p.scales_dtype = scales.dtype;
    if (gptq && cq.act_order && !ckpt_.Has(layer + ".g_idx")) {
      return absl::InvalidArgumentError(absl::StrCat(layer, ": an act-order GPTQ layer (desc_act) without g_idx"));
    }
    if (gptq && ckpt_.Has(layer + ".g_idx")) {
      MM_ASSIGN_OR_RETURN(TensorInfo g_idx, get(".g_idx", {cols}, true));
      const int32_t* idx = static_cast<const int32_t*>(g_idx.data);
      bool in_order = true;
      for (int i = 0; i < cols && in_order; ++i) in_order = idx[i] == i / group;
      if (!in_order && !cq.act_order) {
        return absl::InvalidArgumentError(absl::StrCat(g_idx.file, ": ", g_idx.name, " puts the inputs out of their "
                                                       "groups' order, as act-order does, but desc_act is false"));
      }
      if (!in_order) {
        absl::StatusOr<std::shared_ptr<const QuantizedMatrix>> m = FromActOrder(p, idx);
        if (!m.ok()) return absl::InvalidArgumentError(absl::StrCat(layer, ": ", m.status().message()));
        owned_->push_back(*m);
        return (*m)->view();
      }
    }
    absl::StatusOr<std::shared_ptr<const QuantizedMatrix>> m = FromPackedInt4(p);
    if (!m.ok()) return absl::InvalidArgumentError(absl::StrCat(layer, ": ", m.status().message()));
    owned_->push_back(*m);
    return (*m)->view();
  }
  absl::StatusOr<std::vector<float>> Vec(const std::string& name, int n) const {
    MM_ASSIGN_OR_RETURN(TensorInfo t, ckpt_.GetFloat(name, {n}));
    std::vector<float> v(n);
    ConvertToF32(t.dtype, t.data, n, v.data());
    return v;
  }
  absl::StatusOr<FfnWeights> Ffn(const std::string& prefix, const char* gate, const char* up,
                                 const char* down, int width) const {
    FfnWeights f;
    int h = c_.hidden_size;
    MM_ASSIGN_OR_RETURN(f.gate, Mat(absl::StrCat(prefix, gate, ".weight"), width, h));
    MM_ASSIGN_OR_RETURN(f.up, Mat(absl::StrCat(prefix, up, ".weight"), width, h));
    MM_ASSIGN_OR_RETURN(f.down, Mat(absl::StrCat(prefix, down, ".weight"), h, width));
    return f;
  }

  absl::Status Attention(const std::string& p, AttentionWeights* a) const {
    int h = c_.hidden_size;
    if (c_.mla) {
      int qk = c_.qk_nope_head_dim + c_.qk_rope_head_dim;
      if (c_.q_lora_rank > 0) {
        MM_ASSIGN_OR_RETURN(a->q_a, Mat(p + "q_a_proj.weight", c_.q_lora_rank, h));
        MM_ASSIGN_OR_RETURN(a->q_a_norm, Vec(p + "q_a_layernorm.weight", c_.q_lora_rank));
        MM_ASSIGN_OR_RETURN(a->q_b, Mat(p + "q_b_proj.weight", c_.num_heads * qk, c_.q_lora_rank));
        if (c_.attention_bias) {
          MM_ASSIGN_OR_RETURN(a->q_a_bias, Vec(p + "q_a_proj.bias", c_.q_lora_rank));
        }
      } else {
        MM_ASSIGN_OR_RETURN(a->q, Mat(p + "q_proj.weight", c_.num_heads * qk, h));
      }
      int kv_a_rows = c_.kv_lora_rank + c_.qk_rope_head_dim;
      MM_ASSIGN_OR_RETURN(a->kv_a, Mat(p + "kv_a_proj_with_mqa.weight", kv_a_rows, h));
      if (c_.attention_bias) {
        MM_ASSIGN_OR_RETURN(a->kv_a_bias, Vec(p + "kv_a_proj_with_mqa.bias", kv_a_rows));
      }
      MM_ASSIGN_OR_RETURN(a->kv_a_norm, Vec(p + "kv_a_layernorm.weight", c_.kv_lora_rank));
      MM_ASSIGN_OR_RETURN(a->kv_b, Mat(p + "kv_b_proj.weight",
                                       c_.num_heads * (c_.qk_nope_head_dim + c_.v_head_dim),
                                       c_.kv_lora_rank));
      MM_ASSIGN_OR_RETURN(a->o, Mat(p + "o_proj.weight", h, c_.num_heads * c_.v_head_dim));
      if (c_.o_proj_bias) {
        MM_ASSIGN_OR_RETURN(a->o_bias, Vec(p + "o_proj.bias", h));
      }
      return absl::OkStatus();
    }
    int q_out = c_.num_heads * c_.head_dim, kv_out = c_.num_kv_heads * c_.head_dim;
    MM_ASSIGN_OR_RETURN(a->q, Mat(p + "q_proj.weight", q_out, h));
    MM_ASSIGN_OR_RETURN(a->k, Mat(p + "k_proj.weight", kv_out, h));
    MM_ASSIGN_OR_RETURN(a->v, Mat(p + "v_proj.weight", kv_out, h));
    MM_ASSIGN_OR_RETURN(a->o, Mat(p + "o_proj.weight", h, q_out));
    if (c_.attention_bias) {
      MM_ASSIGN_OR_RETURN(a->q_bias, Vec(p + "q_proj.bias", q_out));
      MM_ASSIGN_OR_RETURN(a->k_bias, Vec(p + "k_proj.bias", kv_out));
      MM_ASSIGN_OR_RETURN(a->v_bias, Vec(p + "v_proj.bias", kv_out));
    }
    if (c_.o_proj_bias) {
      MM_ASSIGN_OR_RETURN(a->o_bias, Vec(p + "o_proj.bias", h));
    }
    if (c_.qk_norm_per_head) {
      MM_ASSIGN_OR_RETURN(a->q_norm, Vec(p + "q_norm.weight", c_.head_dim));
      MM_ASSIGN_OR_RETURN(a->k_norm, Vec(p + "k_norm.weight", c_.head_dim));
    } else if (c_.qk_norm_full) {
      MM_ASSIGN_OR_RETURN(a->q_norm, Vec(p + "q_norm.weight", q_out));
      // transformers sizes OLMoE's k_norm as (hidden / heads) * kv_heads.
      MM_ASSIGN_OR_RETURN(a->k_norm, Vec(p + "k_norm.weight",
                                         (h / c_.num_heads) * c_.num_kv_heads));
      if (static_cast<int>(a->k_norm.size()) != kv_out) {
        return absl::InvalidArgumentError(absl::StrCat(
            p, "k_norm.weight: OLMoE needs head_dim == hidden_size / num_attention_heads"));
      }
    }
    return absl::OkStatus();
  }

  // The MoE block's module prefix: Mixtral's hub files say block_sparse_moe,
  // transformers 5 in memory says mlp.
  std::string MoePrefix(const std::string& layer) const {
    if (c_.arch == Architecture::kMixtral &&
        ckpt_.Has(layer + "block_sparse_moe.gate.weight")) {
      return layer + "block_sparse_moe.";
    }
    return layer + "mlp.";
  }

  absl::StatusOr<FfnWeights> Expert(const std::string& moe, int e) const {
    int w = c_.moe_intermediate_size, h = c_.hidden_size;
    std::string p = absl::StrCat(moe, "experts.", e, ".");
    if (!ckpt_.Has(moe + "experts.gate_up_proj")) {
      // The hub's per-expert layout: Mixtral says w1/w3/w2, the rest
      // gate_proj/up_proj/down_proj.
      if (c_.arch == Architecture::kMixtral) return Ffn(p, "w1", "w3", "w2", w);
      return Ffn(p, "gate_proj", "up_proj", "down_proj", w);
    }
    // transformers 5's fused layout: gate_up_proj [E, 2w, h], down_proj [E, h, w].
    int n = c_.num_experts;
    MM_ASSIGN_OR_RETURN(TensorInfo gu, ckpt_.GetFloat(moe + "experts.gate_up_proj", {n, 2 * w, h}));
    MM_ASSIGN_OR_RETURN(TensorInfo dn, ckpt_.GetFloat(moe + "experts.down_proj", {n, h, w}));
    size_t es = DTypeSize(gu.dtype);
    const char* gu_base = static_cast<const char*>(gu.data) + es * e * 2 * w * h;
    FfnWeights f;
    f.gate = Matrix{gu.dtype, w, h, gu_base};
    f.up = Matrix{gu.dtype, w, h, gu_base + es * w * h};
    f.down = Matrix{dn.dtype, h, w, static_cast<const char*>(dn.data) + DTypeSize(dn.dtype) * e * h * w};
    return f;
  }

  absl::Status Layer(int i, const WeightLoadOptions& opt, ModelWeights* mw) const {
    std::string p = absl::StrCat("model.layers.", i, ".");
    bool moe = c_.is_moe_layer[i];
    std::string moe_prefix = MoePrefix(p);
    if (opt.load_dense) {
      LayerWeights& l = mw->layers[i];
      l.moe = moe;
      MM_ASSIGN_OR_RETURN(l.input_norm, Vec(p + "input_layernorm.weight", c_.hidden_size));
      MM_ASSIGN_OR_RETURN(l.post_attention_norm, Vec(p + "post_attention_layernorm.weight", c_.hidden_size));
      MM_RETURN_IF_ERROR(Attention(p + "self_attn.", &l.attn));
      if (!moe) {
        MM_ASSIGN_OR_RETURN(l.dense, Ffn(p + "mlp.", "gate_proj", "up_proj", "down_proj",
                                         c_.intermediate_size));
      } else {
        MM_ASSIGN_OR_RETURN(l.router, Mat(moe_prefix + "gate.weight", c_.num_experts, c_.hidden_size));
        if (c_.arch == Architecture::kDeepseekV3) {
          MM_ASSIGN_OR_RETURN(l.score_correction_bias,
                              Vec(moe_prefix + "gate.e_score_correction_bias", c_.num_experts));
        }
        if (c_.shared_expert_intermediate_size > 0) {
          const char* name = c_.arch == Architecture::kDeepseekV3 ? "shared_experts." : "shared_expert.";
          MM_ASSIGN_OR_RETURN(l.shared_expert, Ffn(moe_prefix + name, "gate_proj", "up_proj", "down_proj",
                                                   c_.shared_expert_intermediate_size));
        }
        if (c_.shared_expert_gate) {
          MM_ASSIGN_OR_RETURN(l.shared_expert_gate, Mat(moe_prefix + "shared_expert_gate.weight", 1,
                                                        c_.hidden_size));
        }
      }
    }
    if (moe) {
      for (int e = 0; e < c_.num_experts; ++e) {
        if (opt.load_expert && !opt.load_expert(i, e)) continue;
        MM_ASSIGN_OR_RETURN(FfnWeights f, Expert(moe_prefix, e));
        mw->experts.Add(i, e, f);
      }
    }
    return absl::OkStatus();
  }

 private:
  const Checkpoint& ckpt_;
  const ModelConfig& c_;
  std::vector<std::shared_ptr<const QuantizedMatrix>>* owned_;
};

// Quantizes every routed expert held (WeightLoadOptions::quantize_experts),
// its projections spread over the pool's threads; the first error names
// its expert and projection.
absl::Status QuantizeExperts(const ModelConfig& config, const WeightLoadOptions& options, ModelWeights* mw) {
  struct Job {
    int layer, expert;
    const char* name;
    Matrix FfnWeights::*field;
  };
  std::vector<Job> jobs;
  for (int l = 0; l < config.num_layers; ++l) {
    for (int e = 0; e < config.num_experts; ++e) {
      if (mw->experts.Find(l, e) == nullptr) continue;
      for (auto [name, field] : {std::pair{"gate", &FfnWeights::gate}, {"up", &FfnWeights::up},
                                 {"down", &FfnWeights::down}}) {
        jobs.push_back({l, e, name, field});
      }
    }
  }
  std::vector<absl::StatusOr<std::shared_ptr<const QuantizedMatrix>>> done(jobs.size(), absl::UnknownError(""));
  // Int4 in the checkpoint already (GPTQ, AWQ) with ":q8": its own codes,
  // groups and zero points, by int8 inputs (a null result says so).
  const QuantSpec& spec = options.quantize_experts;
  auto run = [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const Job& job = jobs[j];
      const Matrix& m = mw->experts.Find(job.layer, job.expert)->*job.field;
      done[j] = m.quant == QuantKind::kInt4 && spec.kind == QuantKind::kInt4 && spec.int8_inputs
                    ? std::shared_ptr<const QuantizedMatrix>()
                    : Quantize(m, spec);
    }
  };
  if (options.pool != nullptr) {
    options.pool->ParallelFor(static_cast<int64_t>(jobs.size()), 1, run);
  } else {
    run(0, static_cast<int64_t>(jobs.size()));
  }
  for (size_t j = 0; j < jobs.size(); ++j) {
    const Job& job = jobs[j];
    if (!done[j].ok()) {
      return absl::InvalidArgumentError(absl::StrCat("quantizing layer ", job.layer, " expert ", job.expert, "'s ",
                                                     job.name, " projection to ",
                                                     QuantSpecName(options.quantize_experts), ": ",
                                                     done[j].status().message()));
    }
    FfnWeights f = *mw->experts.Find(job.layer, job.expert);
    if (*done[j] == nullptr) {
      (f.*job.field).int8_inputs = true;
    } else {
      f.*job.field = (*done[j])->view();
      mw->quantized.push_back(std::move(*done[j]));
    }
    mw->experts.Add(job.layer, job.expert, f);
  }
  return absl::OkStatus();
}

// Flags every BF16 projection for bf16 inputs (WeightLoadOptions::bf16_inputs)
// but the routers' gates (routing stays as exact as the weights allow) and
// DeepSeek-V3's kv_b, which the CPU's absorbed attention holds in f32.
void UseBf16Inputs(const ModelConfig& config, ModelWeights* mw) {
  auto use = [](Matrix& m) {
    if (m.dtype == DType::kBF16 && !m.quantized()) m.bf16_inputs = true;
  };
  auto ffn = [&](FfnWeights& f) {
    use(f.gate);
    use(f.up);
    use(f.down);
  };
  use(mw->lm_head);
  for (LayerWeights& l : mw->layers) {
    for (Matrix* m : {&l.attn.q, &l.attn.k, &l.attn.v, &l.attn.q_a, &l.attn.q_b, &l.attn.kv_a, &l.attn.o}) {
      use(*m);
    }
    ffn(l.dense);
    ffn(l.shared_expert);
  }
  for (int l = 0; l < config.num_layers; ++l) {
    for (int e = 0; e < config.num_experts; ++e) {
      const FfnWeights* held = mw->experts.Find(l, e);
      if (held == nullptr) continue;
      FfnWeights f = *held;
      ffn(f);
      mw->experts.Add(l, e, f);
    }
  }
}

}  // namespace

absl::StatusOr<ModelWeights> LoadWeights(std::shared_ptr<const Checkpoint> checkpoint,
                                         const ModelConfig& config,
                                         const WeightLoadOptions& options) {
  ModelWeights mw;
  mw.checkpoint = checkpoint;
  Loader ld(*checkpoint, config, &mw.quantized);
  if (options.load_dense) {
    MM_ASSIGN_OR_RETURN(mw.embed, ld.Mat("model.embed_tokens.weight", config.vocab_size, config.hidden_size));
    if (config.tie_word_embeddings) {
      mw.lm_head = mw.embed;
    } else {
      MM_ASSIGN_OR_RETURN(mw.lm_head, ld.Mat("lm_head.weight", config.vocab_size, config.hidden_size));
    }
    MM_ASSIGN_OR_RETURN(mw.final_norm, ld.Vec("model.norm.weight", config.hidden_size));
    mw.layers.resize(config.num_layers);
  }
  for (int i = 0; i < config.num_layers; ++i) {
    MM_RETURN_IF_ERROR(ld.Layer(i, options, &mw));
  }
  if (options.quantize_experts.kind != QuantKind::kNone) MM_RETURN_IF_ERROR(QuantizeExperts(config, options, &mw));
  if (options.bf16_inputs) UseBf16Inputs(config, &mw);
  return mw;
}

}  // namespace moemesh
