#include "core/kernels/cpu/gating.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/kernels/cpu/activation.h"

namespace moemesh {
namespace {

// Indices of the k largest values, largest first; ties keep the lower index
// (what torch.topk does on CPU and CUDA for distinct values).
std::vector<int> TopK(const std::vector<float>& v, int k) {
  std::vector<int> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) {
    return v[a] > v[b] || (v[a] == v[b] && a < b);
  });
  idx.resize(k);
  return idx;
}

}  // namespace

void RouteTokens(const GatingParams& p, const float* logits, int n, int* expert_ids,
                 float* weights) {
  const int e_count = p.num_experts;
  const int slots = p.SlotsPerToken();
  const bool dynamic = p.dynamic_k_max > 0;
  std::vector<float> probs(e_count), choice(e_count);
  for (int t = 0; t < n; ++t) {
    const float* lg = logits + static_cast<long>(t) * e_count;
    int* ids = expert_ids + static_cast<long>(t) * slots;
    float* w = weights + static_cast<long>(t) * slots;
    std::fill(ids, ids + slots, -1);
    std::fill(w, w + slots, 0.0f);

    // probs: the values that become weights; choice: what selection ranks.
    if (p.sigmoid) {
      for (int e = 0; e < e_count; ++e) {
        probs[e] = 1.0f / (1.0f + std::exp(-lg[e]));
        choice[e] = probs[e] + (p.score_bias ? p.score_bias[e] : 0.0f);
      }
      if (p.n_group > 1) {
        // Keep the topk_group groups with the best sum of their top-2 scores.
        const int per = e_count / p.n_group;
        std::vector<float> group_score(p.n_group);
        for (int g = 0; g < p.n_group; ++g) {
          std::vector<float> members(choice.begin() + g * per, choice.begin() + (g + 1) * per);
          std::vector<int> best = TopK(members, 2);
          group_score[g] = members[best[0]] + members[best[1]];
        }
        std::vector<int> keep = TopK(group_score, p.topk_group);
        std::vector<bool> kept(p.n_group, false);
        for (int g : keep) kept[g] = true;
        for (int e = 0; e < e_count; ++e) {
          if (!kept[e / per]) choice[e] = -INFINITY;
        }
      }
    } else {
      std::copy(lg, lg + e_count, probs.begin());
      Softmax(probs.data(), e_count);
      choice = probs;
    }

    int k = p.top_k;
    std::vector<int> order = TopK(choice, dynamic ? std::max(p.dynamic_k_max, 1) : k);
    if (dynamic) {
      // Probability mass of each eligible expert, normalised.
      double total = 0;
      for (int e = 0; e < e_count; ++e) {
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
      Softmax(w, k);
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
}

}  // namespace moemesh
