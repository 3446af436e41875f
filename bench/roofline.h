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

// The same for a DeepSeek-V3-shaped model: latent attention (q_a, kv_a and
// o in bf16; the up-projections q_b and kv_b counted as fp32, as the shared
// script does, though moemesh keeps q_b in bf16), the first `dense_layers`
// layers with a dense FFN, the others with a sigmoid gate, one shared
// expert and the routed experts; the cache holds the latent and the rotated
// key per position.
struct MlaRooflineShape {
  int layers, dense_layers, hidden, heads, q_lora, kv_lora, nope, rope, v_head, experts, top_k, expert_width,
      dense_width, shared_experts, vocab;
};

inline double DecodeStepBytes(const MlaRooflineShape& s, int batch, int context) {
  const double H = s.hidden, nq = s.heads;
  const double attn = (H * s.q_lora + H * (s.kv_lora + s.rope) + nq * s.v_head * H) * 2 +
                      (static_cast<double>(s.q_lora) * nq * (s.nope + s.rope) + s.kv_lora * nq * (s.nope + s.v_head)) * 4;
  const double gate = s.experts * H * 4;
  const double norms = (2 * H + s.q_lora + s.kv_lora) * 4;
  const double expert = 3 * H * s.expert_width * 2;
  const double dense_ffn = 3 * H * s.dense_width * 2;
  const double kv_token = s.layers * (s.kv_lora + s.rope) * 4.0;
  const double distinct = s.experts * (1 - std::pow(1 - static_cast<double>(s.top_k) / s.experts, batch));
  const int moe_layers = s.layers - s.dense_layers;
  return moe_layers * (attn + gate + norms + s.shared_experts * expert + distinct * expert) +
         s.dense_layers * (attn + norms + dense_ffn) + static_cast<double>(s.vocab) * H * 2 + batch * H * 2 +
         static_cast<double>(batch) * context * kv_token;
}

// DeepSeek-V3's shape with `layers` layers, the first of them dense.
inline MlaRooflineShape DeepSeekV3Roofline(int layers) {
  return {layers, 1, 7168, 128, 1536, 512, 128, 64, 128, 256, 8, 2048, 18432, 1, 129280};
}

}  // namespace moemesh

#endif  // MOEMESH_BENCH_ROOFLINE_H_
