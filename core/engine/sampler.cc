#include "core/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_set>

#include "absl/strings/str_cat.h"

namespace moemesh {

float ComputeLogprobs(const float* logits, int vocab, int token, int top_n, std::vector<TokenLogprob>* top) {
  float mx = *std::max_element(logits, logits + vocab);
  double sum = 0;
  for (int i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
  const double lse = mx + std::log(sum);
  top->clear();
  int n = std::min(top_n, vocab);
  if (n > 0) {
    std::vector<int> idx(vocab);
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), [&](int a, int b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (int i = 0; i < n; ++i) top->push_back({idx[i], static_cast<float>(logits[idx[i]] - lse)});
  }
  return static_cast<float>(logits[token] - lse);
}

Sampler::Sampler(const SamplingParams& params, const std::vector<int>& prompt)
    : p_(params), rng_(params.seed ? *params.seed : std::random_device{}()) {
  std::unordered_set<int> s(prompt.begin(), prompt.end());
  seen_.assign(s.begin(), s.end());
}

double Sampler::Uniform() { return static_cast<double>(rng_() >> 11) * (1.0 / 9007199254740992.0); }

int SampleWithDraw(const SamplingParams& p, absl::Span<const std::pair<int, int>> penalty_tokens, double uniform,
                   float* logits, int vocab) {
  // Every listed token once: repetition on all (prompt and output),
  // presence and frequency on the output's.
  for (const auto& [t, n] : penalty_tokens) {
    if (t < 0 || t >= vocab) continue;
    if (p.repetition_penalty != 1.0f) {
      logits[t] = logits[t] > 0 ? logits[t] / p.repetition_penalty : logits[t] * p.repetition_penalty;
    }
    if (n > 0 && (p.presence_penalty != 0 || p.frequency_penalty != 0)) {
      logits[t] -= p.presence_penalty + p.frequency_penalty * n;
    }
  }
  int chosen;
  if (p.temperature == 0) {
    chosen = static_cast<int>(std::max_element(logits, logits + vocab) - logits);
  } else {
    // Candidates sorted by logit, then top-k, softmax, top-p, min-p.
    std::vector<int> idx(vocab);
    std::iota(idx.begin(), idx.end(), 0);
    int k = p.top_k > 0 ? std::min(p.top_k, vocab) : vocab;
    auto by_logit = [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), by_logit);
    idx.resize(k);
    std::vector<double> prob(k);
    double mx = logits[idx[0]] / p.temperature, sum = 0;
    for (int i = 0; i < k; ++i) {
      prob[i] = std::exp(logits[idx[i]] / p.temperature - mx);
      sum += prob[i];
    }
    for (double& q : prob) q /= sum;
    int keep = k;
    if (p.top_p < 1.0f) {
      double cum = 0;
      for (int i = 0; i < k; ++i) {
        cum += prob[i];
        if (cum >= p.top_p) {
          keep = i + 1;
          break;
        }
      }
    }
    if (p.min_p > 0) {
      double floor = p.min_p * prob[0];
      int j = 0;
      while (j < keep && prob[j] >= floor) ++j;
      keep = std::max(1, j);
    }
    double total = 0;
    for (int i = 0; i < keep; ++i) total += prob[i];
    double r = uniform * total;
    chosen = idx[keep - 1];
    for (int i = 0; i < keep; ++i) {
      r -= prob[i];
      if (r < 0) {
        chosen = idx[i];
        break;
      }
    }
  }
  return chosen;
}

int Sampler::Sample(float* logits, int vocab) {
  const int chosen = SampleWithDraw(p_, PenaltyTokens(), Draw(), logits, vocab);
  Record(chosen);
  return chosen;
}

void Sampler::Record(int token) {
  if (out_counts_[token]++ == 0 && std::find(seen_.begin(), seen_.end(), token) == seen_.end()) {
    seen_.push_back(token);
  }
}

std::vector<std::pair<int, int>> Sampler::PenaltyTokens() const {
  std::vector<std::pair<int, int>> out;
  if (p_.repetition_penalty == 1.0f && p_.presence_penalty == 0 && p_.frequency_penalty == 0) return out;
  out.reserve(seen_.size());
  for (int t : seen_) {
    auto it = out_counts_.find(t);
    out.emplace_back(t, it == out_counts_.end() ? 0 : it->second);
  }
  return out;
}

}  // namespace moemesh
