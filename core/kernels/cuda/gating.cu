#include "core/kernels/cuda/gating.h"

#include "core/kernels/cuda/cuda_check.cuh"

namespace moemesh {
namespace {

// Index of the largest value not yet taken; ties go to the lower index, as
// the CPU kernel (and torch.topk) order them.
__device__ int ArgMaxUntaken(const float* v, const bool* taken, int n) {
  int best = -1;
  for (int i = 0; i < n; ++i) {
    if (taken[i]) continue;
    if (best < 0 || v[i] > v[best]) best = i;
  }
  return best;
}

__global__ void RouteKernel(GatingParams p, const float* __restrict__ logits, int n, int* __restrict__ ids_out,
                            float* __restrict__ w_out) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= n) return;
  const int ec = p.num_experts;
  const bool dynamic = p.dynamic_k_max > 0;
  const int slots = dynamic ? p.dynamic_k_max : p.top_k;  // GatingParams::SlotsPerToken, host-only
  const float* lg = logits + static_cast<size_t>(t) * ec;
  int* ids = ids_out + static_cast<size_t>(t) * slots;
  float* w = w_out + static_cast<size_t>(t) * slots;
  for (int j = 0; j < slots; ++j) {
    ids[j] = -1;
    w[j] = 0.f;
  }
  float probs[kMaxGatingExperts], choice[kMaxGatingExperts];
  bool taken[kMaxGatingExperts];
  if (p.sigmoid) {
    for (int e = 0; e < ec; ++e) {
      probs[e] = 1.0f / (1.0f + expf(-lg[e]));
      choice[e] = probs[e] + (p.score_bias ? p.score_bias[e] : 0.0f);
    }
    if (p.n_group > 1) {
      const int per = ec / p.n_group;
      float group_score[64];
      bool group_taken[64];
      for (int g = 0; g < p.n_group; ++g) {
        for (int i = 0; i < per; ++i) taken[i] = false;
        const int a = ArgMaxUntaken(choice + g * per, taken, per);
        taken[a] = true;
        const int b = ArgMaxUntaken(choice + g * per, taken, per);
        group_score[g] = choice[g * per + a] + choice[g * per + b];
        group_taken[g] = false;
      }
      for (int k = 0; k < p.topk_group; ++k) {
        group_taken[ArgMaxUntaken(group_score, group_taken, p.n_group)] = true;
      }
      for (int e = 0; e < ec; ++e) {
        if (!group_taken[e / per]) choice[e] = -INFINITY;
      }
    }
  } else {
    float mx = lg[0];
    for (int e = 1; e < ec; ++e) mx = fmaxf(mx, lg[e]);
    float sum = 0.f;
    for (int e = 0; e < ec; ++e) {
      probs[e] = expf(lg[e] - mx);
      sum += probs[e];
    }
    for (int e = 0; e < ec; ++e) {
      probs[e] /= sum;
      choice[e] = probs[e];
    }
  }
  for (int e = 0; e < ec; ++e) taken[e] = false;
  const int want = dynamic ? max(p.dynamic_k_max, 1) : p.top_k;
  int order[kMaxGatingExperts];
  for (int j = 0; j < want; ++j) {
    order[j] = ArgMaxUntaken(choice, taken, ec);
    taken[order[j]] = true;
  }
  int k = p.top_k;
  if (dynamic) {
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
    float mx = -INFINITY, sum = 0.f;
    for (int j = 0; j < k; ++j) {
      w[j] = lg[ids[j]] / p.temperature;
      mx = fmaxf(mx, w[j]);
    }
    for (int j = 0; j < k; ++j) {
      w[j] = expf(w[j] - mx);
      sum += w[j];
    }
    for (int j = 0; j < k; ++j) w[j] /= sum;
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

}  // namespace

absl::Status RouteTokensCuda(const GatingParams& p, const float* logits, int n, int* expert_ids, float* weights,
                             CudaStream stream) {
  if (p.num_experts < 1 || p.num_experts > kMaxGatingExperts) {
    return absl::InvalidArgumentError("RouteTokensCuda: num_experts must be in [1, 512]");
  }
  const int want = p.dynamic_k_max > 0 ? p.dynamic_k_max : p.top_k;
  if (want < 1 || want > p.num_experts) return absl::InvalidArgumentError("RouteTokensCuda: bad top_k");
  if (p.sigmoid && p.n_group > 1 &&
      (p.n_group > 64 || p.num_experts % p.n_group != 0 || p.num_experts / p.n_group < 2 || p.topk_group < 1 ||
       p.topk_group > p.n_group)) {
    return absl::InvalidArgumentError("RouteTokensCuda: bad expert groups");
  }
  if (n == 0) return absl::OkStatus();
  constexpr int kThreads = 64;
  RouteKernel<<<(n + kThreads - 1) / kThreads, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      p, logits, n, expert_ids, weights);
  return LaunchStatus("RouteKernel");
}

}  // namespace moemesh
