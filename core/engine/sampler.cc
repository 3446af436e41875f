#include "core/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_set>

#include "absl/strings/str_cat.h"

namespace moemesh {

absl::Status SamplingParams::Validate() const {
  auto bad = [](const char* what) { return absl::InvalidArgumentError(what); };
  if (!(temperature >= 0 && std::isfinite(temperature))) return bad("temperature must be >= 0");
  if (top_k < 0) return bad("top_k must be >= 0 (0 disables it)");
  if (!(top_p > 0 && top_p <= 1)) return bad("top_p must be in (0, 1]");
  if (!(min_p >= 0 && min_p <= 1)) return bad("min_p must be in [0, 1]");
  if (!(repetition_penalty > 0 && std::isfinite(repetition_penalty))) {
    return bad("repetition_penalty must be > 0 (1 disables it)");
  }
  if (!(presence_penalty >= -2 && presence_penalty <= 2)) return bad("presence_penalty must be in [-2, 2]");
  if (!(frequency_penalty >= -2 && frequency_penalty <= 2)) return bad("frequency_penalty must be in [-2, 2]");
  return absl::OkStatus();
}

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

int Sampler::Sample(float* logits, int vocab) {
  if (p_.repetition_penalty != 1.0f) {
    for (int t : seen_) {
      if (t < 0 || t >= vocab) continue;
      logits[t] = logits[t] > 0 ? logits[t] / p_.repetition_penalty : logits[t] * p_.repetition_penalty;
    }
  }
  if (p_.presence_penalty != 0 || p_.frequency_penalty != 0) {
    for (const auto& [t, n] : out_counts_) {
      if (t < 0 || t >= vocab) continue;
      logits[t] -= p_.presence_penalty + p_.frequency_penalty * n;
    }
  }
  int chosen;
  if (p_.temperature == 0) {
    chosen = static_cast<int>(std::max_element(logits, logits + vocab) - logits);
  } else {
    // Candidates sorted by logit, then top-k, softmax, top-p, min-p.
    std::vector<int> idx(vocab);
    std::iota(idx.begin(), idx.end(), 0);
    int k = p_.top_k > 0 ? std::min(p_.top_k, vocab) : vocab;
    auto by_logit = [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), by_logit);
    idx.resize(k);
    std::vector<double> prob(k);
    double mx = logits[idx[0]] / p_.temperature, sum = 0;
    for (int i = 0; i < k; ++i) {
      prob[i] = std::exp(logits[idx[i]] / p_.temperature - mx);
      sum += prob[i];
    }
    for (double& q : prob) q /= sum;
    int keep = k;
    if (p_.top_p < 1.0f) {
      double cum = 0;
      for (int i = 0; i < k; ++i) {
        cum += prob[i];
        if (cum >= p_.top_p) {
          keep = i + 1;
          break;
        }
      }
    }
    if (p_.min_p > 0) {
      double floor = p_.min_p * prob[0];
      int j = 0;
      while (j < keep && prob[j] >= floor) ++j;
      keep = std::max(1, j);
    }
    double total = 0;
    for (int i = 0; i < keep; ++i) total += prob[i];
    double r = Uniform() * total;
    chosen = idx[keep - 1];
    for (int i = 0; i < keep; ++i) {
      r -= prob[i];
      if (r < 0) {
        chosen = idx[i];
        break;
      }
    }
  }
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
