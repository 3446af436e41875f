#ifndef MOEMESH_BENCH_ROOFLINE_H_
#define MOEMESH_BENCH_ROOFLINE_H_

#include <cmath>

namespace moemesh {

// The bytes one decode step of a Mixtral- or Qwen3-MoE-shaped model must
// read, as the GPU router keeps its weights: bf16 attention, experts and LM
// head; fp32 gates, norms and KV cache. The step touches the distinct
// experts that `batch` tokens pick under uniform routing, E (1 - (1 - k/E)^N),
// and `context` cached positions per token on average. Benchmarks set their
// step times beside these bytes over the measured copy bandwidth
// (docs/PERFORMANCE.md, "The roofline").
struct RooflineShape {
  int layers, hidden, heads, kv_heads, head_dim, experts, top_k, expert_width, vocab;
};

inline constexpr int kRooflineContext = 192;

inline double DecodeStepBytes(const RooflineShape& s, int batch, int context) {
  const double H = s.hidden, hd = s.head_dim;
  const double attn = (H * s.heads * hd + 2 * H * s.kv_heads * hd + s.heads * hd * H) * 2;
  const double gate = s.experts * H * 4;
  const double norms = (2 * H + 2 * hd) * 4;
  const double expert = 3 * H * s.expert_width * 2;
  const double kv_token = s.layers * 2.0 * s.kv_heads * hd * 4;
  const double distinct = s.experts * (1 - std::pow(1 - static_cast<double>(s.top_k) / s.experts, batch));
  return s.layers * (attn + gate + norms + distinct * expert) + static_cast<double>(s.vocab) * H * 2 +
         batch * H * 2 + static_cast<double>(batch) * context * kv_token;
}

}  // namespace moemesh

#endif  // MOEMESH_BENCH_ROOFLINE_H_
