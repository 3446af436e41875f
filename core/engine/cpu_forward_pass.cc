#include "core/engine/cpu_forward_pass.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/experts/expert_executor.h"
#include "core/experts/ffn.h"
#include "core/engine/kv_cache.h"
#include "core/engine/kernel_params.h"
#include "core/kernels/cpu/activation.h"
#include "core/kernels/cpu/attention.h"
#include "core/kernels/cpu/gating.h"
#include "core/kernels/cpu/linear.h"
#include "core/kernels/cpu/norm.h"
#include "core/tensor/thread_pool.h"

namespace moemesh {
namespace {

// DeepSeek's q_a and kv_a norms use the module default eps, not the config's.
constexpr float kLatentNormEps = 1e-6f;

void AddInPlace(float* y, const float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] += x[i];
}

}  // namespace

// Where a row of the step's activations comes from.
struct CpuForwardPass::RowInfo {
  int item;
  int position;
  std::vector<float> cos, sin;  // rotary angles of this position
};

CpuForwardPass::CpuForwardPass(const ModelConfig& c, std::shared_ptr<const ModelWeights> w, ThreadPool* pool)
    : config_(c), w_(std::move(w)), pool_(pool), rope_(ToRopeParams(c.rope)) {}

absl::StatusOr<std::unique_ptr<CpuForwardPass>> CpuForwardPass::Create(const ModelConfig& config,
                                                     std::shared_ptr<const ModelWeights> weights,
                                                     ThreadPool* pool) {
  MM_RETURN_IF_ERROR(config.Validate());
  MM_RETURN_IF_ERROR(CheckModelGating(config));
  if (weights->layers.size() != static_cast<size_t>(config.num_layers)) {
    return absl::InvalidArgumentError("model weights lack the dense part (attention, norms, gates)");
  }
  std::unique_ptr<CpuForwardPass> m(new CpuForwardPass(config, std::move(weights), pool));
  if (config.mla) {
    for (const LayerWeights& l : m->w_->layers) {
      const Matrix& kvb = l.attn.kv_b;
      std::vector<float> f(static_cast<size_t>(kvb.rows) * kvb.cols);
      ConvertToF32(kvb.dtype, kvb.data, f.size(), f.data());
      m->kv_b_f32_.push_back(std::move(f));
    }
  }
  return m;
}

int CpuForwardPass::kv_k_width() const {
  if (config_.mla) return config_.kv_lora_rank + config_.qk_rope_head_dim;
  return config_.num_kv_heads * config_.head_dim;
}

int CpuForwardPass::kv_v_width() const { return config_.mla ? 0 : config_.num_kv_heads * config_.head_dim; }

void CpuForwardPass::Attention(int layer, const std::vector<RowInfo>& rows,
                      absl::Span<const ForwardItem> items, const float* x, KvCache* cache,
                      float* out) {
  const ModelConfig& c = config_;
  const AttentionWeights& a = w_->layers[layer].attn;
  const int n = static_cast<int>(rows.size());
  const int hd = c.head_dim, q_w = c.num_heads * hd, kv_w = c.num_kv_heads * hd;
  std::vector<float> q(static_cast<size_t>(n) * q_w), k(static_cast<size_t>(n) * kv_w),
      v(static_cast<size_t>(n) * kv_w);
  Linear(x, n, a.q, a.q_bias.empty() ? nullptr : a.q_bias.data(), q.data(), pool_);
  Linear(x, n, a.k, a.k_bias.empty() ? nullptr : a.k_bias.data(), k.data(), pool_);
  Linear(x, n, a.v, a.v_bias.empty() ? nullptr : a.v_bias.data(), v.data(), pool_);
  const float eps = static_cast<float>(c.rms_norm_eps);
  if (c.qk_norm_full) {
    RmsNorm(q.data(), a.q_norm.data(), n, q_w, eps, q.data());
    RmsNorm(k.data(), a.k_norm.data(), n, kv_w, eps, k.data());
  } else if (c.qk_norm_per_head) {
    RmsNorm(q.data(), a.q_norm.data(), n * c.num_heads, hd, eps, q.data());
    RmsNorm(k.data(), a.k_norm.data(), n * c.num_kv_heads, hd, eps, k.data());
  }
  if (c.clip_qkv > 0) {
    const float lim = static_cast<float>(c.clip_qkv);
    for (auto* buf : {&q, &k, &v}) {
      for (float& f : *buf) f = std::clamp(f, -lim, lim);
    }
  }
  for (int r = 0; r < n; ++r) {
    rope_.Apply(q.data() + static_cast<size_t>(r) * q_w, c.num_heads, hd, rows[r].cos.data(),
                rows[r].sin.data());
    rope_.Apply(k.data() + static_cast<size_t>(r) * kv_w, c.num_kv_heads, hd, rows[r].cos.data(),
                rows[r].sin.data());
    float* dst = cache->Row(layer, *items[rows[r].item].seq, rows[r].position);
    std::copy(k.begin() + static_cast<size_t>(r) * kv_w, k.begin() + static_cast<size_t>(r + 1) * kv_w, dst);
    std::copy(v.begin() + static_cast<size_t>(r) * kv_w, v.begin() + static_cast<size_t>(r + 1) * kv_w,
              dst + kv_w);
  }
  AttentionShape shape{c.num_heads, c.num_kv_heads, hd, hd,
                       static_cast<float>(c.AttentionScale()), c.sliding_window[layer]};
  std::vector<float> ctx(static_cast<size_t>(n) * q_w);
  std::vector<const float*> ptrs;
  for (int r = 0; r < n;) {
    const ForwardItem& it = items[rows[r].item];
    int count = static_cast<int>(it.tokens.size());
    KvPages pages = cache->Pages(layer, *it.seq, &ptrs);
    CausalAttention(shape, q.data() + static_cast<size_t>(r) * q_w, count, rows[r].position, pages,
                    ctx.data() + static_cast<size_t>(r) * q_w, pool_);
    r += count;
  }
  Linear(ctx.data(), n, a.o, a.o_bias.empty() ? nullptr : a.o_bias.data(), out, pool_);
}

// Multi-head latent attention with the up-projections absorbed: the cache
// holds the normalised latent c and the rotated shared key; a head scores
// (W_uk^T q_nope) . c + q_rot . k_rot and reads values W_uv (sum p c).
void CpuForwardPass::LatentAttention(int layer, const std::vector<RowInfo>& rows,
                            absl::Span<const ForwardItem> items, const float* x, KvCache* cache,
                            float* out) {
  const ModelConfig& c = config_;
  const AttentionWeights& a = w_->layers[layer].attn;
  const int n = static_cast<int>(rows.size());
  const int H = c.num_heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim,
            lora = c.kv_lora_rank, vd = c.v_head_dim, qk = nope + rope;
  std::vector<float> q(static_cast<size_t>(n) * H * qk);
  if (c.q_lora_rank > 0) {
    std::vector<float> qa(static_cast<size_t>(n) * c.q_lora_rank);
    Linear(x, n, a.q_a, a.q_a_bias.empty() ? nullptr : a.q_a_bias.data(), qa.data(), pool_);
    RmsNorm(qa.data(), a.q_a_norm.data(), n, c.q_lora_rank, kLatentNormEps, qa.data());
    Linear(qa.data(), n, a.q_b, nullptr, q.data(), pool_);
  } else {
    Linear(x, n, a.q, nullptr, q.data(), pool_);
  }
  const int row_w = lora + rope;
  std::vector<float> ckv(static_cast<size_t>(n) * row_w);
  Linear(x, n, a.kv_a, a.kv_a_bias.empty() ? nullptr : a.kv_a_bias.data(), ckv.data(), pool_);
  const std::vector<float>& kvb = kv_b_f32_[layer];  // [H * (nope + vd), lora]
  const int qa_w = H * row_w;  // absorbed query width
  std::vector<float> qabs(static_cast<size_t>(n) * qa_w);
  for (int r = 0; r < n; ++r) {
    float* cr = ckv.data() + static_cast<size_t>(r) * row_w;
    RmsNorm(cr, a.kv_a_norm.data(), 1, lora, kLatentNormEps, cr);
    rope_.Apply(cr + lora, 1, rope, rows[r].cos.data(), rows[r].sin.data());
    float* qr = q.data() + static_cast<size_t>(r) * H * qk;
    rope_.Apply(qr + nope, H, qk, rows[r].cos.data(), rows[r].sin.data());
    float* dst = cache->Row(layer, *items[rows[r].item].seq, rows[r].position);
    std::copy(cr, cr + row_w, dst);
    for (int h = 0; h < H; ++h) {
      const float* qn = qr + h * qk;
      float* qo = qabs.data() + static_cast<size_t>(r) * qa_w + h * row_w;
      std::fill(qo, qo + lora, 0.0f);
      const float* wuk = kvb.data() + static_cast<size_t>(h) * (nope + vd) * lora;
      for (int d = 0; d < nope; ++d) {
        const float s = qn[d];
        const float* wrow = wuk + static_cast<size_t>(d) * lora;
        for (int j = 0; j < lora; ++j) qo[j] += s * wrow[j];
      }
      std::copy(qn + nope, qn + qk, qo + lora);
    }
  }
  AttentionShape shape{H, 1, row_w, lora, static_cast<float>(c.AttentionScale()), 0};
  std::vector<float> lat(static_cast<size_t>(n) * H * lora);
  std::vector<const float*> ptrs;
  for (int r = 0; r < n;) {
    const ForwardItem& it = items[rows[r].item];
    int count = static_cast<int>(it.tokens.size());
    KvPages pages = cache->Pages(layer, *it.seq, &ptrs);
    CausalAttention(shape, qabs.data() + static_cast<size_t>(r) * qa_w, count, rows[r].position,
                    pages, lat.data() + static_cast<size_t>(r) * H * lora, pool_);
    r += count;
  }
  std::vector<float> ctx(static_cast<size_t>(n) * H * vd);
  for (int r = 0; r < n; ++r) {
    for (int h = 0; h < H; ++h) {
      const float* l = lat.data() + (static_cast<size_t>(r) * H + h) * lora;
      const float* wuv = kvb.data() + (static_cast<size_t>(h) * (nope + vd) + nope) * lora;
      float* o = ctx.data() + (static_cast<size_t>(r) * H + h) * vd;
      for (int d = 0; d < vd; ++d) {
        const float* wrow = wuv + static_cast<size_t>(d) * lora;
        float s = 0;
        for (int j = 0; j < lora; ++j) s += wrow[j] * l[j];
        o[d] = s;
      }
    }
  }
  Linear(ctx.data(), n, a.o, a.o_bias.empty() ? nullptr : a.o_bias.data(), out, pool_);
}

absl::Status CpuForwardPass::Mlp(int layer, const float* x, int n, ExpertExecutor* experts, float* out) {
  const ModelConfig& c = config_;
  const LayerWeights& l = w_->layers[layer];
  if (!l.moe) {
    RunFfn(l.dense, x, n, out, pool_);
    return absl::OkStatus();
  }
  std::vector<float> logits(static_cast<size_t>(n) * c.num_experts);
  Linear(x, n, l.router, nullptr, logits.data(), pool_);
  const GatingParams g = ToGatingParams(c, l.score_correction_bias.empty() ? nullptr : l.score_correction_bias.data());
  const int slots = g.SlotsPerToken();
  std::vector<int> ids(static_cast<size_t>(n) * slots);
  std::vector<float> weights(ids.size());
  RouteTokens(g, logits.data(), n, ids.data(), weights.data());
  ExpertBatch batch{layer, n, c.hidden_size, x, slots, ids.data(), weights.data()};
  MM_RETURN_IF_ERROR(experts->Execute(batch, out));
  if (!l.shared_expert.empty()) {
    std::vector<float> shared(static_cast<size_t>(n) * c.hidden_size);
    RunFfn(l.shared_expert, x, n, shared.data(), pool_);
    if (!l.shared_expert_gate.empty()) {
      std::vector<float> gate(n);
      Linear(x, n, l.shared_expert_gate, nullptr, gate.data(), pool_);
      for (int r = 0; r < n; ++r) {
        float s = 1.0f / (1.0f + std::exp(-gate[r]));
        for (int d = 0; d < c.hidden_size; ++d) shared[static_cast<size_t>(r) * c.hidden_size + d] *= s;
      }
    }
    AddInPlace(out, shared.data(), shared.size());
  }
  return absl::OkStatus();
}

absl::Status CpuForwardPass::Forward(absl::Span<const ForwardItem> items, KvCache* cache,
                            ExpertExecutor* experts, std::vector<float>* logits) {
  const ModelConfig& c = config_;
  const int H = c.hidden_size;
  std::vector<RowInfo> rows;
  MM_RETURN_IF_ERROR(CheckForwardItems(items, c.vocab_size));
  if (logits == nullptr) return absl::InvalidArgumentError("the CPU forward pass returns its logits");
  for (size_t i = 0; i < items.size(); ++i) {
    const ForwardItem& it = items[i];
    int first = it.seq->length;
    int end = first + static_cast<int>(it.tokens.size());
    MM_RETURN_IF_ERROR(cache->Reserve(it.seq, end));
    // Dynamic rope depends on the longest position of this sequence's step.
    std::vector<float> inv_freq = rope_.InvFreq(end);
    for (int p = first; p < end; ++p) {
      RowInfo info{static_cast<int>(i), p, std::vector<float>(c.rope.dim / 2),
                   std::vector<float>(c.rope.dim / 2)};
      rope_.Angles(inv_freq, p, info.cos.data(), info.sin.data());
      rows.push_back(std::move(info));
    }
  }
  const int n = static_cast<int>(rows.size());
  std::vector<float> hidden(static_cast<size_t>(n) * H), normed(hidden.size()), delta(hidden.size());
  for (int r = 0; r < n; ++r) {
    const ForwardItem& it = items[rows[r].item];
    GatherRow(w_->embed, it.tokens[rows[r].position - it.seq->length], hidden.data() + static_cast<size_t>(r) * H);
  }
  const float eps = static_cast<float>(c.rms_norm_eps);
  for (int layer = 0; layer < c.num_layers; ++layer) {
    const LayerWeights& l = w_->layers[layer];
    RmsNorm(hidden.data(), l.input_norm.data(), n, H, eps, normed.data());
    if (c.mla) {
      LatentAttention(layer, rows, items, normed.data(), cache, delta.data());
    } else {
      Attention(layer, rows, items, normed.data(), cache, delta.data());
    }
    AddInPlace(hidden.data(), delta.data(), hidden.size());
    RmsNorm(hidden.data(), l.post_attention_norm.data(), n, H, eps, normed.data());
    MM_RETURN_IF_ERROR(Mlp(layer, normed.data(), n, experts, delta.data()));
    AddInPlace(hidden.data(), delta.data(), hidden.size());
  }
  // Final norm and LM head on the rows whose logits are wanted.
  std::vector<float> head_in;
  int r = 0;
  for (const ForwardItem& it : items) {
    int count = static_cast<int>(it.tokens.size());
    int first = it.all_logits ? r : r + count - 1;
    for (int j = first; j < r + count; ++j) {
      head_in.insert(head_in.end(), hidden.begin() + static_cast<size_t>(j) * H,
                     hidden.begin() + static_cast<size_t>(j + 1) * H);
    }
    r += count;
  }
  const int m = static_cast<int>(head_in.size() / H);
  RmsNorm(head_in.data(), w_->final_norm.data(), m, H, eps, head_in.data());
  size_t old = logits->size();
  logits->resize(old + static_cast<size_t>(m) * c.vocab_size);
  Linear(head_in.data(), m, w_->lm_head, nullptr, logits->data() + old, pool_);
  for (const ForwardItem& it : items) it.seq->length += static_cast<int>(it.tokens.size());
  return absl::OkStatus();
}

}  // namespace moemesh
