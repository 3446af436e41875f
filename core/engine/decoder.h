#ifndef MOEMESH_CORE_ENGINE_DECODER_H_
#define MOEMESH_CORE_ENGINE_DECODER_H_

#include <cstddef>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/kernels/cpu/attention.h"

namespace moemesh {

class ExpertExecutor;
struct ModelConfig;
struct ModelWeights;

// The decoder's layers written once: the order of a layer's operations and
// every architecture flag (biases, qk-norm, clipping, latent attention, dense
// and MoE layers, shared experts and their gates) live in RunDecoderLayers,
// over the operations a backend provides (DecoderOps). CpuForwardPass and
// CudaForwardPass implement them with their own kernels and memory; see
// docs/ARCHITECTURE.md ("Adding a model architecture").

// A layer's weights that a product reads; the backend adds the bias that
// goes with it, where the checkpoint has one.
enum class LayerLinear { kQ, kK, kV, kO, kQA, kQB, kKvA, kRouter, kSharedGate };
// A layer's RMS-norm weights.
enum class LayerNorm { kInput, kPostAttention, kQ, kK, kQA, kKvA };
// A layer's gated FFNs (the MoE layer's routed experts go through the
// ExpertExecutor instead).
enum class LayerFfn { kDense, kShared };

// Scratch buffers the layers use; a backend's own start after kNumSlots.
enum DecoderSlot {
  kSlotNormed,
  kSlotDelta,
  kSlotQ,
  kSlotK,
  kSlotV,
  kSlotCtx,
  kSlotQa,
  kSlotCkv,
  kSlotQabs,
  kSlotLat,
  kSlotGate,
  kSlotSharedGate,
  kSlotShared,
  kNumDecoderSlots
};

// What one step of a backend can do to its `n` rows (set by the backend
// before RunDecoderLayers). Pointers are in the backend's memory (host or
// device); `x` and `out` may be the same only where said. Operations run in
// order, as if one after the other.
class DecoderOps {
 public:
  virtual ~DecoderOps() = default;

  // `count` floats of scratch for `slot`. Valid until the slot is asked for
  // again; contents are kept unless the slot grows.
  virtual absl::StatusOr<float*> Scratch(int slot, size_t count) = 0;

  // out[n, out_dim] = x[n, in_dim] W^T (+ bias): in_dim and out_dim are the
  // weight's.
  virtual absl::Status Linear(int layer, LayerLinear which, const float* x, int n, float* out) = 0;
  // RMS norm of `rows` vectors of `width` floats, `stride` apart in `x` and
  // `out` alike (in place allowed).
  virtual absl::Status RmsNorm(int layer, LayerNorm which, const float* x, int rows, int width, int stride,
                               float eps, float* out) = 0;
  // The residual, then the next norm: hidden += delta (rows x width,
  // contiguous), then out = RmsNorm(hidden) with `layer`'s `which` weights.
  // `out` apart from both. By default Add, then RmsNorm; a backend fuses
  // them where launches cost.
  virtual absl::Status AddRmsNorm(int layer, LayerNorm which, float* hidden, const float* delta, int rows,
                                  int width, float eps, float* out);
  // A grouped-query layer's query, key and value products of the same `n`
  // rows of x. By default three Linears; a backend does them in one pass
  // where launches cost.
  virtual absl::Status LinearQkv(int layer, const float* x, int n, float* q, float* k, float* v);
  virtual absl::Status Clamp(float* x, size_t count, float limit) = 0;
  virtual absl::Status Sigmoid(float* x, size_t count) = 0;
  virtual absl::Status Add(float* y, const float* x, size_t count) = 0;

  // Rotary embedding of each row at its position: `heads` heads of the rope
  // dimension, head h of row r at x + r * token_stride + h * head_stride.
  virtual absl::Status Rotate(float* x, int heads, int token_stride, int head_stride) = 0;
  // Then, for a grouped-query layer's `n` rows: each head of q and k
  // normalised on its own where heads.norm (Qwen3's qk-norm, LayerNorm::kQ
  // and kK), q, k and v clamped to [-clip, clip] where clip > 0 (OLMoE's
  // clip_qkv), q and k rotated, and k and v written to the cache. By
  // default RmsNorm, Clamp, Rotate and WriteCache; a backend fuses them
  // where launches cost.
  struct QkHeads {
    int q_heads = 0;
    int kv_heads = 0;
    int head_dim = 0;
    bool norm = false;
    float eps = 0.f;
    float clip = 0.f;
  };
  virtual absl::Status NormRotateCache(int layer, const QkHeads& heads, int n, float* q, float* k, float* v);
  // Appends the rows' keys and values ([n, kv_k_width] and [n, kv_v_width];
  // `v` null for the latent cache) to `layer`'s cache at their positions.
  virtual absl::Status WriteCache(int layer, const float* k, const float* v) = 0;
  // Causal attention of the rows' queries over `layer`'s cache (written
  // for this step's positions already).
  virtual absl::Status Attend(int layer, const AttentionShape& shape, const float* q, float* out) = 0;

  // Latent attention's absorbed up-projections (kv_b per head):
  // qabs[r, h] = (W_uk[h]^T q_nope[r, h], q_rot[r, h]) and
  // ctx[r, h] = W_uv[h] lat[r, h].
  virtual absl::Status AbsorbQuery(int layer, const float* q, float* qabs) = 0;
  virtual absl::Status ExpandLatent(int layer, const float* lat, float* ctx) = 0;

  // out = FFN(x), each row scaled by row_weight[r] (null: 1).
  virtual absl::Status Ffn(int layer, LayerFfn which, const float* x, const float* row_weight, float* out) = 0;

  // The routed experts of an MoE layer in two halves, so that a backend
  // can overlap their travel with the shared expert and with the other
  // lanes' work: StartExperts picks each row's experts from the gate logits
  // and starts what `experts` need (ExpertExecutor::Start, or rows to the
  // host); FinishExperts writes their weighted sum to `out` (the same as
  // StartExperts was given). `x` and `out` stay untouched in between.
  virtual absl::Status StartExperts(int layer, const float* x, const float* logits, ExpertExecutor* experts,
                                    float* out) = 0;
  virtual absl::Status FinishExperts(int layer, float* out) = 0;
};

// Floats per position per layer that WriteCache appends: grouped-query
// keys and values, or DeepSeek's latent and rotated shared key (no values).
int CacheKeyWidth(const ModelConfig& config);
int CacheValueWidth(const ModelConfig& config);

// Runs every decoder layer on the `n` rows of `hidden` (in place): norm,
// attention (grouped-query or latent), residual, norm, dense FFN or MoE
// block, residual.
absl::Status RunDecoderLayers(const ModelConfig& config, const ModelWeights& weights, int n, DecoderOps* ops,
                              ExpertExecutor* experts, float* hidden);

// A micro-batch of a step: `n` rows of hidden states (whole sequences'
// tokens of this step) and the ops over them, with scratch of their own.
// Its routed experts go in `lane` of the executor.
struct DecoderLane {
  int n = 0;
  DecoderOps* ops = nullptr;
  float* hidden = nullptr;
  int lane = 0;
};

// The same over micro-batches in ping-pong: each layer's first half
// (attention up to the routed experts' start, and the shared expert) of
// one lane runs while the routed experts of the lane before it are away
// (ExpertExecutor::Start / Finish), so that with remote experts neither
// side waits on the other. A lane's layer L always comes after the lanes
// before it have written their layer-L keys. Lanes use different
// executor lanes (at most experts->lanes()). One lane is RunDecoderLayers.
absl::Status RunDecoderLanes(const ModelConfig& config, const ModelWeights& weights,
                             absl::Span<const DecoderLane> lanes, ExpertExecutor* experts);

}  // namespace moemesh

#endif  // MOEMESH_CORE_ENGINE_DECODER_H_
