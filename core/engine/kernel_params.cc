#include "core/engine/kernel_params.h"

#include <algorithm>

namespace moemesh {

RopeParams ToRopeParams(const RopeConfig& r) {
  RopeParams p;
  switch (r.type) {
    case RopeType::kDefault: p.kind = RopeKind::kDefault; break;
    case RopeType::kLinear: p.kind = RopeKind::kLinear; break;
    case RopeType::kDynamic: p.kind = RopeKind::kDynamic; break;
    case RopeType::kYarn: p.kind = RopeKind::kYarn; break;
    case RopeType::kLlama3: p.kind = RopeKind::kLlama3; break;
  }
  p.theta = r.theta;
  p.dim = r.dim;
  p.factor = r.factor;
  p.max_position_embeddings = r.max_position_embeddings;
  p.original_max_position_embeddings = r.original_max_position_embeddings;
  p.attention_factor = r.attention_factor;
  p.beta_fast = r.beta_fast;
  p.beta_slow = r.beta_slow;
  p.mscale = r.mscale;
  p.mscale_all_dim = r.mscale_all_dim;
  p.truncate = r.truncate;
  p.low_freq_factor = r.low_freq_factor;
  p.high_freq_factor = r.high_freq_factor;
  p.interleaved = r.interleaved;
  return p;
}

GatingParams ToGatingParams(const ModelConfig& c, const float* score_bias) {
  GatingParams g;
  g.num_experts = c.num_experts;
  g.top_k = c.num_experts_per_tok;
  g.sigmoid = c.scoring == ScoringFunc::kSigmoid;
  g.norm_topk_prob = c.norm_topk_prob;
  g.score_bias = score_bias;
  g.n_group = c.n_group;
  g.topk_group = c.topk_group;
  g.routed_scaling_factor = static_cast<float>(c.routed_scaling_factor);
  g.temperature = static_cast<float>(c.gating.temperature);
  g.dynamic_k_min = c.gating.dynamic_k_min;
  g.dynamic_k_max = c.gating.dynamic_k_max;
  g.dynamic_k_p = static_cast<float>(c.gating.dynamic_k_p);
  return g;
}

absl::Status CheckModelGating(const ModelConfig& c) {
  if (std::find(c.is_moe_layer.begin(), c.is_moe_layer.end(), true) == c.is_moe_layer.end()) {
    return absl::OkStatus();
  }
  return CheckGatingParams(ToGatingParams(c, nullptr));
}

}  // namespace moemesh
