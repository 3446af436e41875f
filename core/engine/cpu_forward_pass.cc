#include "core/engine/cpu_forward_pass.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/experts/expert_executor.h"
#include "core/experts/ffn.h"
#include "core/engine/kv_cache.h"
#include "core/engine/kernel_params.h"
#include "core/kernels/cpu/attention.h"
#include "core/kernels/cpu/gating.h"
#include "core/kernels/cpu/linear.h"
#include "core/kernels/cpu/norm.h"
#include "core/tensor/thread_pool.h"

namespace moemesh {

// The step's hidden rows, after the decoder's scratch.
constexpr int kSlotHidden = kNumDecoderSlots;

CpuForwardPass::CpuForwardPass(const ModelConfig& c, std::shared_ptr<const ModelWeights> w, ThreadPool* pool)
    : config_(c), w_(std::move(w)), pool_(pool), rope_(ToRopeParams(c.rope)), scratch_(kSlotHidden + 1) {}

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

absl::StatusOr<float*> CpuForwardPass::Scratch(int slot, size_t count) {
  if (scratch_.size() <= static_cast<size_t>(slot)) scratch_.resize(slot + 1);
  std::vector<float>& b = scratch_[slot];
  if (b.size() < count) b.resize(count);
  return b.data();
}

absl::Status CpuForwardPass::Linear(int layer, LayerLinear which, const float* x, int n, float* out) {
  const LayerWeights& l = w_->layers[layer];
  const AttentionWeights& a = l.attn;
  const Matrix* m = nullptr;
  const std::vector<float>* bias = nullptr;
  switch (which) {
    case LayerLinear::kQ: m = &a.q, bias = &a.q_bias; break;
    case LayerLinear::kK: m = &a.k, bias = &a.k_bias; break;
    case LayerLinear::kV: m = &a.v, bias = &a.v_bias; break;
    case LayerLinear::kO: m = &a.o, bias = &a.o_bias; break;
    case LayerLinear::kQA: m = &a.q_a, bias = &a.q_a_bias; break;
    case LayerLinear::kQB: m = &a.q_b; break;
    case LayerLinear::kKvA: m = &a.kv_a, bias = &a.kv_a_bias; break;
    case LayerLinear::kRouter: m = &l.router; break;
    case LayerLinear::kSharedGate: m = &l.shared_expert_gate; break;
  }
  const float* b = bias == nullptr || bias->empty() ? nullptr : bias->data();
  moemesh::Linear(x, n, *m, b, out, pool_);
  return absl::OkStatus();
}

absl::Status CpuForwardPass::RmsNorm(int layer, LayerNorm which, const float* x, int rows, int width, int stride,
                                     float eps, float* out) {
  const LayerWeights& l = w_->layers[layer];
  const std::vector<float>* w = nullptr;
  switch (which) {
    case LayerNorm::kInput: w = &l.input_norm; break;
    case LayerNorm::kPostAttention: w = &l.post_attention_norm; break;
    case LayerNorm::kQ: w = &l.attn.q_norm; break;
    case LayerNorm::kK: w = &l.attn.k_norm; break;
    case LayerNorm::kQA: w = &l.attn.q_a_norm; break;
    case LayerNorm::kKvA: w = &l.attn.kv_a_norm; break;
  }
  if (stride == width) {
    moemesh::RmsNorm(x, w->data(), rows, width, eps, out);
    return absl::OkStatus();
  }
  for (int r = 0; r < rows; ++r) {
    const size_t at = static_cast<size_t>(r) * stride;
    moemesh::RmsNorm(x + at, w->data(), 1, width, eps, out + at);
  }
  return absl::OkStatus();
}

absl::Status CpuForwardPass::Clamp(float* x, size_t count, float limit) {
  for (size_t i = 0; i < count; ++i) x[i] = std::clamp(x[i], -limit, limit);
  return absl::OkStatus();
}

absl::Status CpuForwardPass::Sigmoid(float* x, size_t count) {
  for (size_t i = 0; i < count; ++i) x[i] = 1.0f / (1.0f + std::exp(-x[i]));
  return absl::OkStatus();
}

absl::Status CpuForwardPass::Add(float* y, const float* x, size_t count) {
  for (size_t i = 0; i < count; ++i) y[i] += x[i];
  return absl::OkStatus();
}

absl::Status CpuForwardPass::Rotate(float* x, int heads, int token_stride, int head_stride) {
  for (size_t r = 0; r < rows_.size(); ++r) {
    rope_.Apply(x + r * token_stride, heads, head_stride, rows_[r].cos.data(), rows_[r].sin.data());
  }
  return absl::OkStatus();
}

absl::Status CpuForwardPass::WriteCache(int layer, const float* k, const float* v) {
  const size_t k_w = kv_k_width(), v_w = kv_v_width();
  for (size_t r = 0; r < rows_.size(); ++r) {
    float* dst = cache_->Row(layer, *items_[rows_[r].item].seq, rows_[r].position);
    std::copy(k + r * k_w, k + (r + 1) * k_w, dst);
    if (v != nullptr) std::copy(v + r * v_w, v + (r + 1) * v_w, dst + k_w);
  }
  return absl::OkStatus();
}

absl::Status CpuForwardPass::Attend(int layer, const AttentionShape& shape, const float* q, float* out) {
  const size_t q_w = static_cast<size_t>(shape.num_heads) * shape.head_dim;
  const size_t out_w = static_cast<size_t>(shape.num_heads) * shape.v_head_dim;
  std::vector<const float*> ptrs;
  for (size_t r = 0; r < rows_.size();) {
    const ForwardItem& it = items_[rows_[r].item];
    const int count = static_cast<int>(it.tokens.size());
    KvPages pages = cache_->Pages(layer, *it.seq, &ptrs);
    CausalAttention(shape, q + r * q_w, count, rows_[r].position, pages, out + r * out_w, pool_);
    r += count;
  }
  return absl::OkStatus();
}

// W_uk[h] is kv_b[h * (nope + vd) .. + nope, :] ([nope, lora]).
absl::Status CpuForwardPass::AbsorbQuery(int layer, const float* q, float* qabs) {
  const ModelConfig& c = config_;
  const int heads = c.num_heads, nope = c.qk_nope_head_dim, qk = nope + c.qk_rope_head_dim, lora = c.kv_lora_rank,
            vd = c.v_head_dim, row_w = lora + c.qk_rope_head_dim;
  const std::vector<float>& kvb = kv_b_f32_[layer];
  for (size_t r = 0; r < rows_.size(); ++r) {
    for (int h = 0; h < heads; ++h) {
      const float* qn = q + (r * heads + h) * qk;
      float* qo = qabs + (r * heads + h) * row_w;
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
  return absl::OkStatus();
}

// W_uv[h] is kv_b[h * (nope + vd) + nope .. + vd, :] ([vd, lora]).
absl::Status CpuForwardPass::ExpandLatent(int layer, const float* lat, float* ctx) {
  const ModelConfig& c = config_;
  const int heads = c.num_heads, nope = c.qk_nope_head_dim, lora = c.kv_lora_rank, vd = c.v_head_dim;
  const std::vector<float>& kvb = kv_b_f32_[layer];
  for (size_t r = 0; r < rows_.size(); ++r) {
    for (int h = 0; h < heads; ++h) {
      const float* l = lat + (r * heads + h) * lora;
      const float* wuv = kvb.data() + (static_cast<size_t>(h) * (nope + vd) + nope) * lora;
      float* o = ctx + (r * heads + h) * vd;
      for (int d = 0; d < vd; ++d) {
        const float* wrow = wuv + static_cast<size_t>(d) * lora;
        float s = 0;
        for (int j = 0; j < lora; ++j) s += wrow[j] * l[j];
        o[d] = s;
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CpuForwardPass::Ffn(int layer, LayerFfn which, const float* x, const float* row_weight, float* out) {
  const LayerWeights& l = w_->layers[layer];
  const int n = static_cast<int>(rows_.size()), hidden = config_.hidden_size;
  RunFfn(which == LayerFfn::kDense ? l.dense : l.shared_expert, x, n, out, pool_);
  if (row_weight != nullptr) {
    for (int r = 0; r < n; ++r) {
      for (int d = 0; d < hidden; ++d) out[static_cast<size_t>(r) * hidden + d] *= row_weight[r];
    }
  }
  return absl::OkStatus();
}

absl::Status CpuForwardPass::StartExperts(int layer, const float* x, const float* logits, ExpertExecutor* experts) {
  const LayerWeights& l = w_->layers[layer];
  const GatingParams g =
      ToGatingParams(config_, l.score_correction_bias.empty() ? nullptr : l.score_correction_bias.data());
  const int n = static_cast<int>(rows_.size());
  slots_ = g.SlotsPerToken();
  expert_ids_.resize(static_cast<size_t>(n) * slots_);
  expert_weights_.resize(expert_ids_.size());
  RouteTokens(g, logits, n, expert_ids_.data(), expert_weights_.data());
  experts_ = experts;
  expert_rows_ = x;
  return absl::OkStatus();
}

absl::Status CpuForwardPass::FinishExperts(int layer, float* out) {
  ExpertBatch batch{layer, static_cast<int>(rows_.size()), config_.hidden_size, expert_rows_, slots_,
                    expert_ids_.data(), expert_weights_.data()};
  return experts_->Execute(batch, out);
}

absl::Status CpuForwardPass::Forward(absl::Span<const ForwardItem> items, KvCache* cache,
                                     ExpertExecutor* experts, std::vector<float>* logits) {
  const ModelConfig& c = config_;
  const int H = c.hidden_size;
  MM_RETURN_IF_ERROR(CheckForwardItems(items, c.vocab_size));
  if (logits == nullptr) return absl::InvalidArgumentError("the CPU forward pass returns its logits");
  rows_.clear();
  for (size_t i = 0; i < items.size(); ++i) {
    const ForwardItem& it = items[i];
    int first = it.seq->length;
    int end = first + static_cast<int>(it.tokens.size());
    MM_RETURN_IF_ERROR(cache->Reserve(it.seq, end));
    // Dynamic rope depends on the longest position of this sequence's step.
    std::vector<float> inv_freq = rope_.InvFreq(end);
    for (int p = first; p < end; ++p) {
      RowInfo info{static_cast<int>(i), p, std::vector<float>(c.rope.dim / 2), std::vector<float>(c.rope.dim / 2)};
      rope_.Angles(inv_freq, p, info.cos.data(), info.sin.data());
      rows_.push_back(std::move(info));
    }
  }
  items_ = items;
  cache_ = cache;
  const int n = static_cast<int>(rows_.size());
  MM_ASSIGN_OR_RETURN(float* hidden, Scratch(kSlotHidden, static_cast<size_t>(n) * H));
  for (int r = 0; r < n; ++r) {
    const ForwardItem& it = items[rows_[r].item];
    GatherRow(w_->embed, it.tokens[rows_[r].position - it.seq->length], hidden + static_cast<size_t>(r) * H);
  }
  MM_RETURN_IF_ERROR(RunDecoderLayers(c, *w_, n, this, experts, hidden));
  // Final norm and LM head on the rows whose logits are wanted.
  std::vector<float> head_in;
  int r = 0;
  for (const ForwardItem& it : items) {
    int count = static_cast<int>(it.tokens.size());
    int first = it.all_logits ? r : r + count - 1;
    head_in.insert(head_in.end(), hidden + static_cast<size_t>(first) * H, hidden + static_cast<size_t>(r + count) * H);
    r += count;
  }
  const int m = static_cast<int>(head_in.size() / H);
  moemesh::RmsNorm(head_in.data(), w_->final_norm.data(), m, H, static_cast<float>(c.rms_norm_eps), head_in.data());
  size_t old = logits->size();
  logits->resize(old + static_cast<size_t>(m) * c.vocab_size);
  moemesh::Linear(head_in.data(), m, w_->lm_head, nullptr, logits->data() + old, pool_);
  for (const ForwardItem& it : items) it.seq->length += static_cast<int>(it.tokens.size());
  return absl::OkStatus();
}

}  // namespace moemesh
