#ifndef MOEMESH_CORE_KERNELS_CPU_ROPE_H_
#define MOEMESH_CORE_KERNELS_CPU_ROPE_H_

#include <vector>

namespace moemesh {

enum class RopeKind { kDefault, kLinear, kDynamic, kYarn, kLlama3 };

// Rotary embedding parameters (see transformers' modeling_rope_utils).
struct RopeParams {
  RopeKind kind = RopeKind::kDefault;
  double theta = 10000.0;
  int dim = 0;  // rotated channels per head (even)
  double factor = 1.0;
  int max_position_embeddings = 0;
  int original_max_position_embeddings = 0;
  double attention_factor = 0.0;  // yarn; 0 = derive
  double beta_fast = 32.0, beta_slow = 1.0;
  double mscale = 0.0, mscale_all_dim = 0.0;
  bool truncate = true;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;
  bool interleaved = false;  // pairs (x0,x1),(x2,x3) instead of halves
};

// Precomputed frequencies for one RopeParams. Thread-safe (immutable).
class Rope {
 public:
  explicit Rope(const RopeParams& p);

  // Inverse frequencies (dim / 2) for a sequence whose longest position in
  // this step is seq_len - 1; only "dynamic" depends on seq_len.
  std::vector<float> InvFreq(int seq_len) const;
  // Multiplier of cos and sin (yarn's attention factor; 1 otherwise).
  float attention_scaling() const { return attention_scaling_; }
  const RopeParams& params() const { return p_; }

  // Fills cos/sin [dim / 2] for `position` from `inv_freq`.
  void Angles(const std::vector<float>& inv_freq, int position, float* cos, float* sin) const;

  // Rotates the first `dim` channels of `num_heads` vectors spaced `stride`
  // floats apart. Interleaved input pairs come out de-interleaved (first the
  // rotated even channels, then the odd), as transformers' DeepSeek code.
  void Apply(float* x, int num_heads, int stride, const float* cos, const float* sin) const;

 private:
  RopeParams p_;
  std::vector<float> base_inv_freq_;
  float attention_scaling_ = 1.0f;
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CPU_ROPE_H_
