#ifndef MOEMESH_CORE_KERNELS_CPU_GATING_H_
#define MOEMESH_CORE_KERNELS_CPU_GATING_H_

#include "absl/status/status.h"

namespace moemesh {

struct GatingParams {
  int num_experts = 0;
  int top_k = 0;
  bool sigmoid = false;         // DeepSeek-V3 scoring; softmax otherwise
  bool norm_topk_prob = false;  // renormalise the selected weights
  const float* score_bias = nullptr;  // e_score_correction_bias (selection only)
  int n_group = 1;              // group-limited selection (sigmoid scoring)
  int topk_group = 1;
  float routed_scaling_factor = 1.0f;
  // Extensions, off when zero: temperature T makes the weights
  // softmax(selected logits / T); dynamic k picks per token the smallest
  // k in [k_min, k_max] whose cumulative probability reaches p.
  float temperature = 0.0f;
  int dynamic_k_min = 0;
  int dynamic_k_max = 0;
  float dynamic_k_p = 0.0f;

  // Slots per token in the outputs: top_k, or dynamic_k_max when dynamic.
  int SlotsPerToken() const { return dynamic_k_max > 0 ? dynamic_k_max : top_k; }
};

// INVALID_ARGUMENT unless the routing rule can take `p`: 1 to
// kMaxGatingExperts experts, 1 to num_experts slots, and expert groups that
// divide the experts (at most kMaxGatingGroups, two experts or more each).
absl::Status CheckGatingParams(const GatingParams& p);

// Routes `n` tokens from their router logits [n, num_experts] by RouteToken
// (gating_rule.h, the GPU's rule too), for `p` that CheckGatingParams
// accepts. Writes expert ids and weights [n, SlotsPerToken()], highest score
// first; unused slots (dynamic k) get id -1 and weight 0. Matches
// transformers' routers.
void RouteTokens(const GatingParams& p, const float* logits, int n, int* expert_ids,
                 float* weights);

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CPU_GATING_H_
