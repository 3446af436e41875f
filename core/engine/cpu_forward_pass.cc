#include "core/engine/cpu_forward_pass.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/engine/decoder.h"
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

class CpuForwardPass::Lane : public DecoderOps {
 public:
  Lane(CpuForwardPass* pass, int lane) : p_(pass), lane_(lane), scratch_(kNumDecoderSlots) {}

  // This step's rows of the lane: rows [first, first + count) of the pass's.
  void Assign(int first, int count) { rows_ = absl::MakeConstSpan(p_->rows_).subspan(first, count); }

  absl::StatusOr<float*> Scratch(int slot, size_t count) override;
  absl::Status Linear(int layer, LayerLinear which, const float* x, int n, float* out) override;
  absl::Status RmsNorm(int layer, LayerNorm which, const float* x, int rows, int width, int stride, float eps,
                       float* out) override;
  absl::Status Clamp(float* x, size_t count, float limit) override;
  absl::Status Sigmoid(float* x, size_t count) override;
  absl::Status Add(float* y, const float* x, size_t count) override;
  absl::Status Rotate(float* x, int heads, int token_stride, int head_stride) override;
  absl::Status WriteCache(int layer, const float* k, const float* v) override;
  absl::Status Attend(int layer, const AttentionShape& shape, const float* q, float* out) override;
  absl::Status AbsorbQuery(int layer, const float* q, float* qabs) override;
  absl::Status ExpandLatent(int layer, const float* lat, float* ctx) override;
  absl::Status Ffn(int layer, LayerFfn which, const float* x, const float* row_weight, float* out) override;
  absl::Status StartExperts(int layer, const float* x, const float* logits, ExpertExecutor* experts,
                            float* out) override;
  absl::Status FinishExperts(int layer, float* out) override;

 private:
  CpuForwardPass* const p_;
  const int lane_;  // the executor's lane for its experts
  absl::Span<const RowInfo> rows_;
  std::vector<std::vector<float>> scratch_;  // by DecoderSlot
  // The routed experts between StartExperts and FinishExperts.
  ExpertExecutor* experts_ = nullptr;
  std::vector<int> expert_ids_;
  std::vector<float> expert_weights_;
};

CpuForwardPass::CpuForwardPass(const ModelConfig& c, std::shared_ptr<const ModelWeights> w, ThreadPool* pool,
                               int micro_batches)
    : config_(c), w_(std::move(w)), pool_(pool), micro_batches_(micro_batches), rope_(ToRopeParams(c.rope)) {}

CpuForwardPass::~CpuForwardPass() = default;

absl::StatusOr<std::unique_ptr<CpuForwardPass>> CpuForwardPass::Create(const ModelConfig& config,
                                                     std::shared_ptr<const ModelWeights> weights,
                                                     ThreadPool* pool, int micro_batches) {
  if (micro_batches < 1 || micro_batches > 2) {
    return absl::InvalidArgumentError(absl::StrCat("micro-batches ", micro_batches, ": expected 1 or 2"));
  }
  MM_RETURN_IF_ERROR(config.Validate());
  MM_RETURN_IF_ERROR(CheckModelGating(config));
  if (weights->layers.size() != static_cast<size_t>(config.num_layers)) {
    return absl::InvalidArgumentError("model weights lack the dense part (attention, norms, gates)");
  }
  std::unique_ptr<CpuForwardPass> m(new CpuForwardPass(config, std::move(weights), pool, micro_batches));
  if (config.mla) {
    for (const LayerWeights& l : m->w_->layers) {
      const Matrix& kvb = l.attn.kv_b;
      std::vector<float> f(static_cast<size_t>(kvb.rows) * kvb.cols);
      for (int r = 0; r < kvb.rows; ++r) GatherRow(kvb, r, f.data() + static_cast<size_t>(r) * kvb.cols);  // codes too
      m->kv_b_f32_.push_back(std::move(f));
    }
  }
  return m;
}

absl::StatusOr<float*> CpuForwardPass::Lane::Scratch(int slot, size_t count) {
  if (scratch_.size() <= static_cast<size_t>(slot)) scratch_.resize(slot + 1);
  std::vector<float>& b = scratch_[slot];
  if (b.size() < count) b.resize(count);
  return b.data();
}

absl::Status CpuForwardPass::Lane::Linear(int layer, LayerLinear which, const float* x, int n, float* out) {
  const LayerWeights& l = p_->w_->layers[layer];
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
  moemesh::Linear(x, n, *m, b, out, p_->pool_);
  return absl::OkStatus();
}

absl::Status CpuForwardPass::Lane::RmsNorm(int layer, LayerNorm which, const float* x, int rows, int width,
                                           int stride, float eps, float* out) {
  const LayerWeights& l = p_->w_->layers[layer];
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

absl::Status CpuForwardPass::Lane::Clamp(float* x, size_t count, float limit) {
  for (size_t i = 0; i < count; ++i) x[i] = std::clamp(x[i], -limit, limit);
  return absl::OkStatus();
}

absl::Status CpuForwardPass::Lane::Sigmoid(float* x, size_t count) {
  for (size_t i = 0; i < count; ++i) x[i] = 1.0f / (1.0f + std::exp(-x[i]));
  return absl::OkStatus();
}

absl::Status CpuForwardPass::Lane::Add(float* y, const float* x, size_t count) {
  for (size_t i = 0; i < count; ++i) y[i] += x[i];
  return absl::OkStatus();
}

absl::Status CpuForwardPass::Lane::Rotate(float* x, int heads, int token_stride, int head_stride) {
  for (size_t r = 0; r < rows_.size(); ++r) {
    p_->rope_.Apply(x + r * token_stride, heads, head_stride, rows_[r].cos.data(), rows_[r].sin.data());
  }
  return absl::OkStatus();
}

absl::Status CpuForwardPass::Lane::WriteCache(int layer, const float* k, const float* v) {
  const size_t k_w = p_->kv_k_width(), v_w = p_->kv_v_width();
  for (size_t r = 0; r < rows_.size(); ++r) {
    float* dst = p_->cache_->Row(layer, *p_->items_[rows_[r].item].seq, rows_[r].position);
    std::copy(k + r * k_w, k + (r + 1) * k_w, dst);
    if (v != nullptr) std::copy(v + r * v_w, v + (r + 1) * v_w, dst + k_w);
  }
  return absl::OkStatus();
}

absl::Status CpuForwardPass::Lane::Attend(int layer, const AttentionShape& shape, const float* q, float* out) {
  const size_t q_w = static_cast<size_t>(shape.num_heads) * shape.head_dim;
  const size_t out_w = static_cast<size_t>(shape.num_heads) * shape.v_head_dim;
  std::vector<const float*> ptrs;
  for (size_t r = 0; r < rows_.size();) {
    const ForwardItem& it = p_->items_[rows_[r].item];
    const int count = static_cast<int>(it.tokens.size());
    KvPages pages = p_->cache_->Pages(layer, *it.seq, &ptrs);
    CausalAttention(shape, q + r * q_w, count, rows_[r].position, pages, out + r * out_w, p_->pool_);
    r += count;
  }
  return absl::OkStatus();
}

// W_uk[h] is kv_b[h * (nope + vd) .. + nope, :] ([nope, lora]).
absl::Status CpuForwardPass::Lane::AbsorbQuery(int layer, const float* q, float* qabs) {
  const ModelConfig& c = p_->config_;
  const int heads = c.num_heads, nope = c.qk_nope_head_dim, qk = nope + c.qk_rope_head_dim, lora = c.kv_lora_rank,
            vd = c.v_head_dim, row_w = lora + c.qk_rope_head_dim;
  const std::vector<float>& kvb = p_->kv_b_f32_[layer];
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
absl::Status CpuForwardPass::Lane::ExpandLatent(int layer, const float* lat, float* ctx) {
  const ModelConfig& c = p_->config_;
  const int heads = c.num_heads, nope = c.qk_nope_head_dim, lora = c.kv_lora_rank, vd = c.v_head_dim;
  const std::vector<float>& kvb = p_->kv_b_f32_[layer];
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

absl::Status CpuForwardPass::Lane::Ffn(int layer, LayerFfn which, const float* x, const float* row_weight,
                                       float* out) {
  const LayerWeights& l = p_->w_->layers[layer];
  const int n = static_cast<int>(rows_.size()), hidden = p_->config_.hidden_size;
  RunFfn(which == LayerFfn::kDense ? l.dense : l.shared_expert, x, n, out, p_->pool_);
  if (row_weight != nullptr) {
    for (int r = 0; r < n; ++r) {
      for (int d = 0; d < hidden; ++d) out[static_cast<size_t>(r) * hidden + d] *= row_weight[r];
    }
  }
  return absl::OkStatus();
}

absl::Status CpuForwardPass::Lane::StartExperts(int layer, const float* x, const float* logits,
                                                ExpertExecutor* experts, float* out) {
  const ModelConfig& c = p_->config_;
  const LayerWeights& l = p_->w_->layers[layer];
  const GatingParams g = ToGatingParams(c, l.score_correction_bias.empty() ? nullptr : l.score_correction_bias.data());
  const int n = static_cast<int>(rows_.size());
  const int slots = g.SlotsPerToken();
  expert_ids_.resize(static_cast<size_t>(n) * slots);
  expert_weights_.resize(expert_ids_.size());
  RouteTokens(g, logits, n, expert_ids_.data(), expert_weights_.data());
  experts_ = experts;
  const ExpertBatch batch{layer, n, c.hidden_size, x, slots, expert_ids_.data(), expert_weights_.data()};
  return experts->Start(batch, out, lane_);
}

absl::Status CpuForwardPass::Lane::FinishExperts(int layer, float* out) { return experts_->Finish(lane_); }

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
  if (hidden_.size() < static_cast<size_t>(n) * H) hidden_.resize(static_cast<size_t>(n) * H);
  float* hidden = hidden_.data();
  for (int r = 0; r < n; ++r) {
    const ForwardItem& it = items[rows_[r].item];
    GatherRow(w_->embed, it.tokens[rows_[r].position - it.seq->length], hidden + static_cast<size_t>(r) * H);
  }
  // Two micro-batches of whole sequences, as near halves of the rows as
  // the sequences allow, where the experts take two at once.
  int split = n;
  if (micro_batches_ > 1 && experts->lanes() > 1 && items.size() > 1) {
    int best = n;
    for (int r = 0, i = 0; i + 1 < static_cast<int>(items.size()); ++i) {
      r += static_cast<int>(items[i].tokens.size());
      if (std::abs(2 * r - n) < std::abs(2 * best - n)) best = r;
    }
    split = best;
  }
  std::vector<DecoderLane> lanes;
  for (int first = 0; first < n;) {
    const int count = lanes.empty() ? split : n - first;
    if (lanes_.size() <= lanes.size()) lanes_.push_back(std::make_unique<Lane>(this, static_cast<int>(lanes.size())));
    Lane* lane = lanes_[lanes.size()].get();
    lane->Assign(first, count);
    lanes.push_back({count, lane, hidden + static_cast<size_t>(first) * H, static_cast<int>(lanes.size())});
    first += count;
  }
  MM_RETURN_IF_ERROR(RunDecoderLanes(c, *w_, lanes, experts));
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
