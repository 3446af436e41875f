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

// The threads that route one token together. A team has size() members,
// each with its lane(); every member runs RouteToken, takes the experts
// lane, lane + size, ..., and the reductions give every member the team's
// result. SerialTeam is one thread (the CPU); the GPU kernel routes each
// token with a warp (core/kernels/cuda/gating.cu), so its cost does not grow
// with the experts a thread must walk alone.
struct SerialTeam {
  MM_HOST_DEVICE int lane() const { return 0; }
  MM_HOST_DEVICE int size() const { return 1; }
  MM_HOST_DEVICE float Max(float v) const { return v; }
  MM_HOST_DEVICE double Sum(double v) const { return v; }
  // The team's best (value, index): the largest value, ties to the lower
  // index; index -1 (nothing) loses to anything.
  MM_HOST_DEVICE void Best(float* /*value*/, int* /*index*/) const {}
  // Makes the members' writes to the scratch visible to each other.
  MM_HOST_DEVICE void Sync() const {}
};

// Per-token working memory of RouteToken: on the stack for a thread, in
// shared memory for a warp.
struct GatingScratch {
  float probs[kMaxGatingExperts];   // the values that become weights
  float choice[kMaxGatingExperts];  // what selection ranks
  int order[kMaxGatingExperts];     // selected experts, best first
  bool taken[kMaxGatingExperts];
  float group_score[kMaxGatingGroups];
  bool group_kept[kMaxGatingGroups];
};

namespace gating_internal {

// Index of the largest value not yet taken; ties go to the lower index (what
// torch.topk gives for distinct values).
template <class Team>
MM_HOST_DEVICE inline int ArgMaxUntaken(const Team& team, const float* v, const bool* taken, int n) {
  int best = -1;
  float value = 0.f;
  for (int i = team.lane(); i < n; i += team.size()) {
    if (taken[i]) continue;
    if (best < 0 || v[i] > value) best = i, value = v[i];
  }
  team.Best(&value, &best);
  return best;
}

// Softmax of n values in place: fp32 exponentials, a double sum.
template <class Team>
MM_HOST_DEVICE inline void Softmax(const Team& team, float* x, int n) {
  float mx = -INFINITY;
  for (int i = team.lane(); i < n; i += team.size()) mx = x[i] > mx ? x[i] : mx;
  mx = team.Max(mx);
  double sum = 0;
  for (int i = team.lane(); i < n; i += team.size()) {
    x[i] = expf(x[i] - mx);
    sum += x[i];
  }
  const float inv = static_cast<float>(1.0 / team.Sum(sum));
  for (int i = team.lane(); i < n; i += team.size()) x[i] *= inv;
}

// Marks taken[i] for the whole team.
template <class Team>
MM_HOST_DEVICE inline void Take(const Team& team, bool* taken, int i) {
  if (team.lane() == 0) taken[i] = true;
  team.Sync();
}

}  // namespace gating_internal

// Routes one token from its router logits `lg` [num_experts]: writes
// p.SlotsPerToken() expert ids and weights, highest score first; unused
// slots (dynamic k) get id -1 and weight 0. Matches transformers' routers:
// softmax top-k; sigmoid scoring with a score bias (selection only) and
// group-limited top-k (DeepSeek-V3); normalisation and scaling; and the
// temperature and dynamic-k extensions. Needs num_experts <=
// kMaxGatingExperts and n_group <= kMaxGatingGroups (callers check). Every
// member of `team` calls it with the same arguments and scratch; lane 0
// writes the outputs.
template <class Team>
MM_HOST_DEVICE inline void RouteToken(const Team& team, const GatingParams& p, const float* lg, int* ids, float* w,
                                      GatingScratch* s) {
  using gating_internal::ArgMaxUntaken;
  using gating_internal::Take;
  const int ec = p.num_experts;
  const int lane = team.lane(), stride = team.size();
  float* probs = s->probs;
  float* choice = s->choice;
  bool* taken = s->taken;
  if (p.sigmoid) {
    for (int e = lane; e < ec; e += stride) {
      probs[e] = 1.0f / (1.0f + expf(-lg[e]));
      choice[e] = probs[e] + (p.score_bias ? p.score_bias[e] : 0.0f);
    }
    team.Sync();
    if (p.n_group > 1) {
      // Keep the topk_group groups with the best sum of their top-2 scores.
      const int per = ec / p.n_group;
      for (int g = 0; g < p.n_group; ++g) {
        for (int i = lane; i < per; i += stride) taken[i] = false;
        team.Sync();
        const int a = ArgMaxUntaken(team, choice + g * per, taken, per);
        Take(team, taken, a);
        const int b = ArgMaxUntaken(team, choice + g * per, taken, per);
        if (lane == 0) {
          s->group_score[g] = choice[g * per + a] + choice[g * per + b];
          s->group_kept[g] = false;
        }
        team.Sync();
      }
      for (int k = 0; k < p.topk_group; ++k) {
        Take(team, s->group_kept, ArgMaxUntaken(team, s->group_score, s->group_kept, p.n_group));
      }
      for (int e = lane; e < ec; e += stride) {
        if (!s->group_kept[e / per]) choice[e] = -INFINITY;
      }
    }
  } else {
    for (int e = lane; e < ec; e += stride) probs[e] = lg[e];
    gating_internal::Softmax(team, probs, ec);
    for (int e = lane; e < ec; e += stride) choice[e] = probs[e];
  }
  for (int e = lane; e < ec; e += stride) taken[e] = false;
  team.Sync();
  const bool dynamic = p.dynamic_k_max > 0;
  const int want = dynamic ? (p.dynamic_k_max > 1 ? p.dynamic_k_max : 1) : p.top_k;
  int* order = s->order;
  for (int j = 0; j < want; ++j) {
    const int best = ArgMaxUntaken(team, choice, taken, ec);
    if (lane == 0) order[j] = best;
    Take(team, taken, best);
  }
  // The probability mass dynamic k measures its share against.
  double total = 0;
  if (dynamic) {
    for (int e = lane; e < ec; e += stride) {
      if (choice[e] != -INFINITY) total += probs[e];
    }
    total = team.Sum(total);
  }
  if (lane != 0) return;
  // What is left touches k values: one member does it.
  const int slots = dynamic ? p.dynamic_k_max : p.top_k;
  for (int j = 0; j < slots; ++j) {
    ids[j] = -1;
    w[j] = 0.f;
  }
  int k = p.top_k;
  if (dynamic) {
    // The smallest k in [k_min, k_max] whose share of the eligible experts'
    // probability reaches p.
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
    gating_internal::Softmax(SerialTeam(), w, k);
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
