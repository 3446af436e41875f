#ifndef MOEMESH_CORE_KERNELS_CPU_GATING_RULE_H_
#define MOEMESH_CORE_KERNELS_CPU_GATING_RULE_H_

// The per-token routing rule, written once for the CPU kernel (RouteTokens)
// and the GPU kernel (RouteTokensCuda): compiled as host code here and as
// device code by nvcc, so both route with the same arithmetic, order and
// tie-breaking. Plain C++ with fixed-size scratch (no allocation, no
// library calls a GPU lacks).

#include <math.h>

#include "core/kernels/cpu/gating.h"

#if defined(__CUDACC__)
#define MM_HOST_DEVICE __host__ __device__
#else
#define MM_HOST_DEVICE
#endif

namespace moemesh {

// The most experts per layer and expert groups the rule routes among
// (DeepSeek-V3: 256 in 8 groups).
inline constexpr int kMaxGatingExperts = 512;
inline constexpr int kMaxGatingGroups = 64;
// The most routes (tokens x slots) of one layer that a GPU groups by expert
// itself (GroupExpertsCuda, one thread block); larger batches are grouped
// on the host.
inline constexpr int kMaxDeviceGroupedRoutes = 4096;

namespace gating_internal {

// Index of the largest value not yet taken; ties go to the lower index (what
// torch.topk gives for distinct values).
MM_HOST_DEVICE inline int ArgMaxUntaken(const float* v, const bool* taken, int n) {
  int best = -1;
  for (int i = 0; i < n; ++i) {
    if (taken[i]) continue;
    if (best < 0 || v[i] > v[best]) best = i;
  }
  return best;
}

// Softmax of n values in place: fp32 exponentials, a double sum.
MM_HOST_DEVICE inline void Softmax(float* x, int n) {
  float mx = x[0];
  for (int i = 1; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  double sum = 0;
  for (int i = 0; i < n; ++i) {
    x[i] = expf(x[i] - mx);
    sum += x[i];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int i = 0; i < n; ++i) x[i] *= inv;
}

}  // namespace gating_internal

// Routes one token from its router logits `lg` [num_experts]: writes
// p.SlotsPerToken() expert ids and weights, highest score first; unused
// slots (dynamic k) get id -1 and weight 0. Matches transformers' routers:
// softmax top-k; sigmoid scoring with a score bias (selection only) and
// group-limited top-k (DeepSeek-V3); normalisation and scaling; and the
// temperature and dynamic-k extensions. Needs num_experts <=
// kMaxGatingExperts and n_group <= kMaxGatingGroups (callers check).
MM_HOST_DEVICE inline void RouteToken(const GatingParams& p, const float* lg, int* ids, float* w) {
  using gating_internal::ArgMaxUntaken;
  const int ec = p.num_experts;
  const bool dynamic = p.dynamic_k_max > 0;
  const int slots = dynamic ? p.dynamic_k_max : p.top_k;
  for (int j = 0; j < slots; ++j) {
    ids[j] = -1;
    w[j] = 0.f;
  }
  // probs: the values that become weights; choice: what selection ranks.
  float probs[kMaxGatingExperts], choice[kMaxGatingExperts];
  bool taken[kMaxGatingExperts];
  if (p.sigmoid) {
    for (int e = 0; e < ec; ++e) {
      probs[e] = 1.0f / (1.0f + expf(-lg[e]));
      choice[e] = probs[e] + (p.score_bias ? p.score_bias[e] : 0.0f);
    }
    if (p.n_group > 1) {
      // Keep the topk_group groups with the best sum of their top-2 scores.
      const int per = ec / p.n_group;
      float group_score[kMaxGatingGroups];
      bool group_kept[kMaxGatingGroups];
      for (int g = 0; g < p.n_group; ++g) {
        for (int i = 0; i < per; ++i) taken[i] = false;
        const int a = ArgMaxUntaken(choice + g * per, taken, per);
        taken[a] = true;
        const int b = ArgMaxUntaken(choice + g * per, taken, per);
        group_score[g] = choice[g * per + a] + choice[g * per + b];
        group_kept[g] = false;
      }
      for (int k = 0; k < p.topk_group; ++k) group_kept[ArgMaxUntaken(group_score, group_kept, p.n_group)] = true;
      for (int e = 0; e < ec; ++e) {
        if (!group_kept[e / per]) choice[e] = -INFINITY;
      }
    }
  } else {
    for (int e = 0; e < ec; ++e) probs[e] = lg[e];
    gating_internal::Softmax(probs, ec);
    for (int e = 0; e < ec; ++e) choice[e] = probs[e];
  }
  for (int e = 0; e < ec; ++e) taken[e] = false;
  const int want = dynamic ? (p.dynamic_k_max > 1 ? p.dynamic_k_max : 1) : p.top_k;
  int order[kMaxGatingExperts];
  for (int j = 0; j < want; ++j) {
    order[j] = ArgMaxUntaken(choice, taken, ec);
    taken[order[j]] = true;
  }
  int k = p.top_k;
  if (dynamic) {
    // The smallest k in [k_min, k_max] whose share of the eligible experts'
    // probability reaches p.
    double total = 0;
    for (int e = 0; e < ec; ++e) {
      if (choice[e] != -INFINITY) total += probs[e];
    }
    double cum = 0;
    k = p.dynamic_k_max;
    for (int j = 0; j < p.dynamic_k_max; ++j) {
      cum += probs[order[j]] / total;
      if (j + 1 >= p.dynamic_k_min && cum >= p.dynamic_k_p) {
        k = j + 1;
        break;
      }
    }
  }
  for (int j = 0; j < k; ++j) {
    ids[j] = order[j];
    w[j] = probs[order[j]];
  }
  if (p.temperature > 0) {
    for (int j = 0; j < k; ++j) w[j] = lg[ids[j]] / p.temperature;
    gating_internal::Softmax(w, k);
  } else if (p.norm_topk_prob) {
    float sum = 0;
    for (int j = 0; j < k; ++j) sum += w[j];
    if (p.sigmoid) sum += 1e-20f;
    for (int j = 0; j < k; ++j) w[j] /= sum;
  }
  if (p.routed_scaling_factor != 1.0f) {
    for (int j = 0; j < k; ++j) w[j] *= p.routed_scaling_factor;
  }
}

}  // namespace moemesh

#undef MM_HOST_DEVICE

#endif  // MOEMESH_CORE_KERNELS_CPU_GATING_RULE_H_
