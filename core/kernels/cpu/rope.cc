#include "core/kernels/cpu/rope.h"

#include <algorithm>
#include <cmath>

namespace moemesh {
namespace {

std::vector<float> DefaultInvFreq(double base, int dim) {
  std::vector<float> f(dim / 2);
  for (int i = 0; i < dim / 2; ++i) {
    float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    f[i] = 1.0f / std::pow(static_cast<float>(base), exponent);
  }
  return f;
}

double YarnGetMscale(double scale, double mscale) {
  if (scale <= 1) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

}  // namespace

Rope::Rope(const RopeParams& p) : p_(p) {
  const int dim = p.dim;
  switch (p.kind) {
    case RopeKind::kDefault:
    case RopeKind::kDynamic:
      base_inv_freq_ = DefaultInvFreq(p.theta, dim);
      break;
    case RopeKind::kLinear:
      base_inv_freq_ = DefaultInvFreq(p.theta, dim);
      for (float& f : base_inv_freq_) f = static_cast<float>(f / p.factor);
      break;
    case RopeKind::kLlama3: {
      base_inv_freq_ = DefaultInvFreq(p.theta, dim);
      double old_len = p.original_max_position_embeddings;
      double low_wavelen = old_len / p.low_freq_factor;
      double high_wavelen = old_len / p.high_freq_factor;
      for (float& f : base_inv_freq_) {
        double wavelen = 2 * M_PI / f;
        double scaled = wavelen > low_wavelen ? f / p.factor : f;
        if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
          double smooth = (old_len / wavelen - p.low_freq_factor) /
                          (p.high_freq_factor - p.low_freq_factor);
          scaled = (1 - smooth) * scaled / p.factor + smooth * scaled;
        }
        f = static_cast<float>(scaled);
      }
      break;
    }
    case RopeKind::kYarn: {
      double factor = p.factor;
      double af = p.attention_factor;
      if (af == 0) {
        af = (p.mscale != 0 && p.mscale_all_dim != 0)
                 ? YarnGetMscale(factor, p.mscale) / YarnGetMscale(factor, p.mscale_all_dim)
                 : YarnGetMscale(factor, 1.0);
      }
      attention_scaling_ = static_cast<float>(af);
      double base = p.theta;
      auto correction_dim = [&](double rotations) {
        return (dim * std::log(p.original_max_position_embeddings / (rotations * 2 * M_PI))) /
               (2 * std::log(base));
      };
      double low = correction_dim(p.beta_fast), high = correction_dim(p.beta_slow);
      if (p.truncate) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      low = std::max(low, 0.0);
      high = std::min(high, static_cast<double>(dim - 1));
      if (low == high) high += 0.001;
      base_inv_freq_.resize(dim / 2);
      for (int i = 0; i < dim / 2; ++i) {
        float pos_freq = std::pow(static_cast<float>(base),
                                  static_cast<float>(2 * i) / static_cast<float>(dim));
        float extrapolation = 1.0f / pos_freq;
        float interpolation = static_cast<float>(1.0 / (factor * pos_freq));
        float ramp = static_cast<float>(std::clamp((i - low) / (high - low), 0.0, 1.0));
        float extrapolation_factor = 1.0f - ramp;
        base_inv_freq_[i] = interpolation * (1 - extrapolation_factor) +
                            extrapolation * extrapolation_factor;
      }
      break;
    }
  }
}

std::vector<float> Rope::InvFreq(int seq_len) const {
  if (p_.kind != RopeKind::kDynamic || seq_len <= p_.max_position_embeddings) {
    return base_inv_freq_;
  }
  // NTK-aware: stretch the base as the sequence outgrows the trained length.
  double ratio = p_.factor * seq_len / p_.max_position_embeddings - (p_.factor - 1);
  double base = p_.theta * std::pow(ratio, static_cast<double>(p_.dim) / (p_.dim - 2));
  return DefaultInvFreq(base, p_.dim);
}

void Rope::Angles(const std::vector<float>& inv_freq, int position, float* cos,
                  float* sin) const {
  const float pos = static_cast<float>(position);
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    float a = pos * inv_freq[i];
    cos[i] = std::cos(a) * attention_scaling_;
    sin[i] = std::sin(a) * attention_scaling_;
  }
}

void Rope::Apply(float* x, int num_heads, int stride, const float* cos, const float* sin) const {
  const int half = p_.dim / 2;
  thread_local std::vector<float> tmp;
  tmp.resize(p_.dim);
  for (int h = 0; h < num_heads; ++h) {
    float* v = x + static_cast<long>(h) * stride;
    if (p_.interleaved) {
      for (int i = 0; i < half; ++i) {
        float a = v[2 * i], b = v[2 * i + 1];
        tmp[i] = a * cos[i] - b * sin[i];
        tmp[i + half] = b * cos[i] + a * sin[i];
      }
      std::copy(tmp.begin(), tmp.end(), v);
    } else {
      for (int i = 0; i < half; ++i) {
        float a = v[i], b = v[i + half];
        v[i] = a * cos[i] - b * sin[i];
        v[i + half] = b * cos[i] + a * sin[i];
      }
    }
  }
}

}  // namespace moemesh
