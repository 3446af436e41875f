#ifndef MOEMESH_CORE_ENGINE_SAMPLER_H_
#define MOEMESH_CORE_ENGINE_SAMPLER_H_

#include <cstdint>
#include <random>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/engine/request.h"

namespace moemesh {

// Log-softmax of the raw `logits`: the log probability of `token`, and the
// `top_n` most likely tokens in `*top` (most likely first, ties by id).
float ComputeLogprobs(const float* logits, int vocab_size, int token, int top_n, std::vector<TokenLogprob>* top);

// Sampler::Sample's choice with its state spelled out: the penalties on
// `penalty_tokens` (Sampler::PenaltyTokens), then greedy or a draw of
// `uniform` (Sampler::Draw) over the filtered softmax. Changes `logits`.
int SampleWithDraw(const SamplingParams& params, absl::Span<const std::pair<int, int>> penalty_tokens,
                   double uniform, float* logits, int vocab_size);

// Picks tokens for one sequence. Deterministic given the seed.
class Sampler {
 public:
  Sampler(const SamplingParams& params, const std::vector<int>& prompt);

  // Chooses the next token from `logits` (modified in place) and records it.
  int Sample(float* logits, int vocab_size);

  // The parts of Sample, for a sampler elsewhere (a GPU, CudaSampler) that
  // must pick the same tokens: the parameters; the tokens the penalties
  // touch, each once, with its count in the output (0: prompt only); the
  // draw Sample would make now (0 for greedy, which draws nothing); and
  // recording the token picked.
  const SamplingParams& params() const { return p_; }
  std::vector<std::pair<int, int>> PenaltyTokens() const;
  double Draw() { return p_.temperature == 0 ? 0.0 : Uniform(); }
  void Record(int token);

 private:
  double Uniform();  // [0, 1)

  SamplingParams p_;
  std::vector<int> seen_;                    // prompt and output tokens (distinct)
  std::unordered_map<int, int> out_counts_;  // output token -> count
  std::mt19937_64 rng_;
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_ENGINE_SAMPLER_H_
