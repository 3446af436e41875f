#include "core/engine/decoder.h"

#include <vector>

#include "core/common/status_macros.h"
#include "core/model/config.h"
#include "core/model/weights.h"

namespace moemesh {
namespace {

// DeepSeek's q_a and kv_a norms use the module default eps, not the config's.
constexpr float kLatentNormEps = 1e-6f;

size_t Floats(int rows, int width) { return static_cast<size_t>(rows) * width; }

absl::Status Attention(const ModelConfig& c, int layer, int n, DecoderOps* ops, const float* x, float* out) {
  const int hd = c.head_dim, q_w = c.num_heads * hd, kv_w = c.num_kv_heads * hd;
  MM_ASSIGN_OR_RETURN(float* q, ops->Scratch(kSlotQ, Floats(n, q_w)));
  MM_ASSIGN_OR_RETURN(float* k, ops->Scratch(kSlotK, Floats(n, kv_w)));
  MM_ASSIGN_OR_RETURN(float* v, ops->Scratch(kSlotV, Floats(n, kv_w)));
  MM_RETURN_IF_ERROR(ops->LinearQkv(layer, x, n, q, k, v));
  const float eps = static_cast<float>(c.rms_norm_eps);
  if (c.qk_norm_full) {  // OLMoE: over all heads at once
    MM_RETURN_IF_ERROR(ops->RmsNorm(layer, LayerNorm::kQ, q, n, q_w, q_w, eps, q));
    MM_RETURN_IF_ERROR(ops->RmsNorm(layer, LayerNorm::kK, k, n, kv_w, kv_w, eps, k));
  }
  DecoderOps::QkHeads heads;
  heads.q_heads = c.num_heads, heads.kv_heads = c.num_kv_heads, heads.head_dim = hd;
  heads.norm = c.qk_norm_per_head && !c.qk_norm_full, heads.eps = eps;  // Qwen3: each head on its own
  heads.clip = c.clip_qkv > 0 ? static_cast<float>(c.clip_qkv) : 0.f;
  MM_RETURN_IF_ERROR(ops->NormRotateCache(layer, heads, n, q, k, v));
  const AttentionShape shape{c.num_heads, c.num_kv_heads, hd, hd, static_cast<float>(c.AttentionScale()),
                             c.sliding_window[layer]};
  MM_ASSIGN_OR_RETURN(float* ctx, ops->Scratch(kSlotCtx, Floats(n, q_w)));
  MM_RETURN_IF_ERROR(ops->Attend(layer, shape, q, ctx));
  return ops->Linear(layer, LayerLinear::kO, ctx, n, out);
}

// Multi-head latent attention with the up-projections absorbed: the cache
// holds the normalised latent c and the rotated shared key; a head scores
// (W_uk^T q_nope) . c + q_rot . k_rot and reads values W_uv (sum p c).
absl::Status LatentAttention(const ModelConfig& c, int layer, int n, DecoderOps* ops, const float* x, float* out) {
  const int heads = c.num_heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim, lora = c.kv_lora_rank,
            vd = c.v_head_dim, qk = nope + rope, row_w = lora + rope;
  MM_ASSIGN_OR_RETURN(float* q, ops->Scratch(kSlotQ, Floats(n, heads * qk)));
  if (c.q_lora_rank > 0) {
    MM_ASSIGN_OR_RETURN(float* qa, ops->Scratch(kSlotQa, Floats(n, c.q_lora_rank)));
    MM_RETURN_IF_ERROR(ops->Linear(layer, LayerLinear::kQA, x, n, qa));
    MM_RETURN_IF_ERROR(
        ops->RmsNorm(layer, LayerNorm::kQA, qa, n, c.q_lora_rank, c.q_lora_rank, kLatentNormEps, qa));
    MM_RETURN_IF_ERROR(ops->Linear(layer, LayerLinear::kQB, qa, n, q));
  } else {
    MM_RETURN_IF_ERROR(ops->Linear(layer, LayerLinear::kQ, x, n, q));
  }
  // Each cache row: the normalised latent, then the rotated shared key.
  MM_ASSIGN_OR_RETURN(float* ckv, ops->Scratch(kSlotCkv, Floats(n, row_w)));
  MM_RETURN_IF_ERROR(ops->Linear(layer, LayerLinear::kKvA, x, n, ckv));
  MM_RETURN_IF_ERROR(ops->RmsNorm(layer, LayerNorm::kKvA, ckv, n, lora, row_w, kLatentNormEps, ckv));
  MM_RETURN_IF_ERROR(ops->Rotate(ckv + lora, 1, row_w, 0));
  MM_RETURN_IF_ERROR(ops->Rotate(q + nope, heads, heads * qk, qk));
  MM_RETURN_IF_ERROR(ops->WriteCache(layer, ckv, nullptr));
  MM_ASSIGN_OR_RETURN(float* qabs, ops->Scratch(kSlotQabs, Floats(n, heads * row_w)));
  MM_RETURN_IF_ERROR(ops->AbsorbQuery(layer, q, qabs));
  const AttentionShape shape{heads, 1, row_w, lora, static_cast<float>(c.AttentionScale()), 0};
  MM_ASSIGN_OR_RETURN(float* lat, ops->Scratch(kSlotLat, Floats(n, heads * lora)));
  MM_RETURN_IF_ERROR(ops->Attend(layer, shape, qabs, lat));
  MM_ASSIGN_OR_RETURN(float* ctx, ops->Scratch(kSlotCtx, Floats(n, heads * vd)));
  MM_RETURN_IF_ERROR(ops->ExpandLatent(layer, lat, ctx));
  return ops->Linear(layer, LayerLinear::kO, ctx, n, out);
}

// The first half of the MLP: a dense FFN, or the MoE block's gate, its
// routed experts started (*away = layer) and the shared expert (scaled by
// its sigmoid gate where there is one) computed while they are away, into
// *shared.
absl::Status StartMlp(const ModelConfig& c, const LayerWeights& w, int layer, int n, DecoderOps* ops,
                      ExpertExecutor* experts, const float* x, float* out, float** shared, int* away) {
  *shared = nullptr;
  if (!w.moe) return ops->Ffn(layer, LayerFfn::kDense, x, nullptr, out);
  MM_ASSIGN_OR_RETURN(float* logits, ops->Scratch(kSlotGate, Floats(n, c.num_experts)));
  MM_RETURN_IF_ERROR(ops->Linear(layer, LayerLinear::kRouter, x, n, logits));
  MM_RETURN_IF_ERROR(ops->StartExperts(layer, x, logits, experts, out));
  *away = layer;
  if (w.shared_expert.empty()) return absl::OkStatus();
  float* row_weight = nullptr;
  if (!w.shared_expert_gate.empty()) {
    MM_ASSIGN_OR_RETURN(row_weight, ops->Scratch(kSlotSharedGate, n));
    MM_RETURN_IF_ERROR(ops->Linear(layer, LayerLinear::kSharedGate, x, n, row_weight));
    MM_RETURN_IF_ERROR(ops->Sigmoid(row_weight, n));
  }
  MM_ASSIGN_OR_RETURN(*shared, ops->Scratch(kSlotShared, Floats(n, c.hidden_size)));
  return ops->Ffn(layer, LayerFfn::kShared, x, row_weight, *shared);
}

// A lane between the halves of its layers.
struct LaneState {
  float* normed = nullptr;
  float* delta = nullptr;
  float* shared = nullptr;  // this layer's shared expert's rows, if any
  int away = -1;            // the layer whose routed experts are started, not finished
};

}  // namespace

absl::Status DecoderOps::AddRmsNorm(int layer, LayerNorm which, float* hidden, const float* delta, int rows,
                                    int width, float eps, float* out) {
  MM_RETURN_IF_ERROR(Add(hidden, delta, Floats(rows, width)));
  return RmsNorm(layer, which, hidden, rows, width, width, eps, out);
}

absl::Status DecoderOps::LinearQkv(int layer, const float* x, int n, float* q, float* k, float* v) {
  MM_RETURN_IF_ERROR(Linear(layer, LayerLinear::kQ, x, n, q));
  MM_RETURN_IF_ERROR(Linear(layer, LayerLinear::kK, x, n, k));
  return Linear(layer, LayerLinear::kV, x, n, v);
}

absl::Status DecoderOps::NormRotateCache(int layer, const QkHeads& h, int n, float* q, float* k, float* v) {
  const int q_w = h.q_heads * h.head_dim, kv_w = h.kv_heads * h.head_dim;
  if (h.norm) {
    MM_RETURN_IF_ERROR(RmsNorm(layer, LayerNorm::kQ, q, n * h.q_heads, h.head_dim, h.head_dim, h.eps, q));
    MM_RETURN_IF_ERROR(RmsNorm(layer, LayerNorm::kK, k, n * h.kv_heads, h.head_dim, h.head_dim, h.eps, k));
  }
  if (h.clip > 0) {
    MM_RETURN_IF_ERROR(Clamp(q, Floats(n, q_w), h.clip));
    MM_RETURN_IF_ERROR(Clamp(k, Floats(n, kv_w), h.clip));
    MM_RETURN_IF_ERROR(Clamp(v, Floats(n, kv_w), h.clip));
  }
  MM_RETURN_IF_ERROR(Rotate(q, h.q_heads, q_w, h.head_dim));
  MM_RETURN_IF_ERROR(Rotate(k, h.kv_heads, kv_w, h.head_dim));
  return WriteCache(layer, k, v);
}

int CacheKeyWidth(const ModelConfig& c) {
  return c.mla ? c.kv_lora_rank + c.qk_rope_head_dim : c.num_kv_heads * c.head_dim;
}

int CacheValueWidth(const ModelConfig& c) { return c.mla ? 0 : c.num_kv_heads * c.head_dim; }

absl::Status RunDecoderLayers(const ModelConfig& c, const ModelWeights& weights, int n, DecoderOps* ops,
                              ExpertExecutor* experts, float* hidden) {
  const DecoderLane lane{n, ops, hidden, 0};
  return RunDecoderLanes(c, weights, absl::MakeConstSpan(&lane, 1), experts);
}

absl::Status RunDecoderLanes(const ModelConfig& c, const ModelWeights& weights, absl::Span<const DecoderLane> lanes,
                             ExpertExecutor* experts) {
  if (weights.layers.size() != static_cast<size_t>(c.num_layers)) {
    return absl::InvalidArgumentError("model weights lack the dense part (attention, norms, gates)");
  }
  const float eps = static_cast<float>(c.rms_norm_eps);
  const int h = c.hidden_size;
  std::vector<LaneState> state(lanes.size());
  for (size_t i = 0; i < lanes.size(); ++i) {
    const DecoderLane& ln = lanes[i];
    const size_t floats = Floats(ln.n, h);
    MM_ASSIGN_OR_RETURN(state[i].normed, ln.ops->Scratch(kSlotNormed, floats));
    MM_ASSIGN_OR_RETURN(state[i].delta, ln.ops->Scratch(kSlotDelta, floats));
    MM_RETURN_IF_ERROR(ln.ops->RmsNorm(0, LayerNorm::kInput, ln.hidden, ln.n, h, h, eps, state[i].normed));
  }
  // A layer's first half: attention, its residual with the next norm, and
  // the MLP up to the routed experts' start.
  auto start = [&](size_t i, int layer) -> absl::Status {
    const DecoderLane& ln = lanes[i];
    LaneState& st = state[i];
    MM_RETURN_IF_ERROR(c.mla ? LatentAttention(c, layer, ln.n, ln.ops, st.normed, st.delta)
                             : Attention(c, layer, ln.n, ln.ops, st.normed, st.delta));
    MM_RETURN_IF_ERROR(
        ln.ops->AddRmsNorm(layer, LayerNorm::kPostAttention, ln.hidden, st.delta, ln.n, h, eps, st.normed));
    return StartMlp(c, weights.layers[layer], layer, ln.n, ln.ops, experts, st.normed, st.delta, &st.shared,
                    &st.away);
  };
  // The second half: the routed experts' sums with the shared expert's, the
  // residual, and the next layer's norm (each residual goes with the norm
  // after it; the last alone: the final norm is the head's).
  auto finish = [&](size_t i, int layer) -> absl::Status {
    const DecoderLane& ln = lanes[i];
    LaneState& st = state[i];
    if (st.away >= 0) {
      st.away = -1;
      MM_RETURN_IF_ERROR(ln.ops->FinishExperts(layer, st.delta));
    }
    if (st.shared != nullptr) MM_RETURN_IF_ERROR(ln.ops->Add(st.delta, st.shared, Floats(ln.n, h)));
    if (layer + 1 < c.num_layers) {
      return ln.ops->AddRmsNorm(layer + 1, LayerNorm::kInput, ln.hidden, st.delta, ln.n, h, eps, st.normed);
    }
    return ln.ops->Add(ln.hidden, st.delta, Floats(ln.n, h));
  };
  absl::Status status = [&]() -> absl::Status {
    for (size_t i = 0; i < lanes.size(); ++i) MM_RETURN_IF_ERROR(start(i, 0));
    for (int layer = 0; layer < c.num_layers; ++layer) {
      for (size_t i = 0; i < lanes.size(); ++i) {
        MM_RETURN_IF_ERROR(finish(i, layer));
        if (layer + 1 < c.num_layers) MM_RETURN_IF_ERROR(start(i, layer + 1));
      }
    }
    return absl::OkStatus();
  }();
  if (!status.ok()) {
    // Collect what other lanes still have away, so that no answer is left
    // in flight for the next step; the step failed already.
    for (size_t i = 0; i < lanes.size(); ++i) {
      if (state[i].away >= 0) lanes[i].ops->FinishExperts(state[i].away, state[i].delta).IgnoreError();
    }
  }
  return status;
}

}  // namespace moemesh
