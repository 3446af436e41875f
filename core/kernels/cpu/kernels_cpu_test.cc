#include <cmath>
#include <random>
#include <vector>

#include "core/kernels/cpu/activation.h"
#include "core/kernels/cpu/attention.h"
#include "core/kernels/cpu/gating.h"
#include "core/kernels/cpu/linear.h"
#include "core/kernels/cpu/norm.h"
#include "core/kernels/cpu/rope.h"
#include "core/tensor/thread_pool.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

std::vector<float> Random(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

// Linear against a double-precision reference on the same rounded weights,
// for every weight dtype, every kernel variant this CPU runs, and shapes
// that are not multiples of the tiles or the vector loops (k past 64 + 16
// with a scalar tail).
TEST(LinearTest, MatchesReferenceForEachDtypeAndShape) {
  ThreadPool pool(2);
  for (int v = 0; v <= static_cast<int>(BestLinearIsa()); ++v) {
    for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
      for (auto [m, n, k] : {std::tuple{1, 7, 13}, {3, 33, 64}, {17, 130, 257}, {2, 1, 8}, {1, 9, 1111},
                             {4, 5, 87}}) {
        std::vector<float> x = Random(static_cast<size_t>(m) * k, 1), wf = Random(static_cast<size_t>(n) * k, 2);
        std::vector<float> bias = Random(n, 3);
        std::vector<uint16_t> w16(wf.size());
        std::vector<float> wr(wf.size());  // the weights as the kernel sees them
        for (size_t i = 0; i < wf.size(); ++i) {
          if (dt == DType::kBF16) w16[i] = F32ToBf16(wf[i]), wr[i] = Bf16ToF32(w16[i]);
          if (dt == DType::kF16) w16[i] = F32ToF16(wf[i]), wr[i] = F16ToF32(w16[i]);
          if (dt == DType::kF32) wr[i] = wf[i];
        }
        MatrixView w{dt, n, k, dt == DType::kF32 ? static_cast<const void*>(wf.data()) : w16.data()};
        for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
          std::vector<float> y(static_cast<size_t>(m) * n, NAN);
          Linear(x.data(), m, w, bias.data(), y.data(), p, static_cast<LinearIsa>(v));
          for (int i = 0; i < m; ++i) {
            for (int j = 0; j < n; ++j) {
              double ref = bias[j];
              for (int d = 0; d < k; ++d) ref += static_cast<double>(x[i * k + d]) * wr[j * k + d];
              ASSERT_NEAR(y[i * n + j], ref, 1e-4 * (1 + std::fabs(ref)))
                  << DTypeName(dt) << " m=" << m << " n=" << n << " k=" << k << " isa " << v;
            }
          }
        }
      }
    }
  }
}

// A row's result does not depend on the batch it is in (the mesh splits
// batches into micro-batches and must give the one process's logits bit for
// bit): every batch size, through decode's kernels and prefill's, gives
// each row exactly what it gives alone.
TEST(LinearTest, ARowsResultDoesNotDependOnItsBatch) {
  ThreadPool pool(2);
  for (int v = 0; v <= static_cast<int>(BestLinearIsa()); ++v) {
    for (DType dt : {DType::kF32, DType::kBF16}) {
      for (auto [n, k] : {std::pair{37, 1111}, {16, 64}, {5, 200}}) {
        const int max_m = 19;
        std::vector<float> x = Random(static_cast<size_t>(max_m) * k, 4), wf = Random(static_cast<size_t>(n) * k, 5);
        std::vector<uint16_t> w16(wf.size());
        for (size_t i = 0; i < wf.size(); ++i) w16[i] = F32ToBf16(wf[i]);
        MatrixView w{dt, n, k, dt == DType::kF32 ? static_cast<const void*>(wf.data()) : w16.data()};
        std::vector<float> alone(static_cast<size_t>(max_m) * n);
        for (int i = 0; i < max_m; ++i) {
          Linear(x.data() + static_cast<size_t>(i) * k, 1, w, nullptr, alone.data() + static_cast<size_t>(i) * n,
                 nullptr, static_cast<LinearIsa>(v));
        }
        for (int m : {2, 3, 4, 5, 8, 13, 19}) {
          std::vector<float> y(static_cast<size_t>(m) * n);
          Linear(x.data(), m, w, nullptr, y.data(), &pool, static_cast<LinearIsa>(v));
          for (size_t j = 0; j < y.size(); ++j) {
            ASSERT_EQ(y[j], alone[j]) << DTypeName(dt) << " isa " << v << " m=" << m << " n=" << n << " k=" << k
                                      << " row " << j / n << " col " << j % n;
          }
        }
      }
    }
  }
}

TEST(NormTest, RmsNormMatchesFormula) {
  std::vector<float> x = {1, 2, 3, 4}, w = {1, 0.5f, 2, 1}, y(4);
  RmsNorm(x.data(), w.data(), 1, 4, 1e-6f, y.data());
  float inv = 1.0f / std::sqrt(7.5f + 1e-6f);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(y[i], w[i] * x[i] * inv, 1e-6);
}

TEST(ActivationTest, SiluMulAndSoftmax) {
  float g[3] = {-1, 0, 2}, u[3] = {2, 5, 0.5f}, o[3];
  SiluMul(g, u, 3, o);
  EXPECT_NEAR(o[0], -1 / (1 + std::exp(1.0)) * 2, 1e-6);
  EXPECT_EQ(o[1], 0);
  EXPECT_NEAR(o[2], 2 / (1 + std::exp(-2.0)) * 0.5, 1e-6);
  float s[3] = {1000, 1001, 999};  // must not overflow
  Softmax(s, 3);
  EXPECT_NEAR(s[0] + s[1] + s[2], 1.0, 1e-6);
  EXPECT_GT(s[1], s[0]);
}

TEST(RopeTest, DefaultFrequenciesAndRotation) {
  RopeParams p;
  p.dim = 8;
  p.theta = 10000;
  Rope rope(p);
  std::vector<float> f = rope.InvFreq(1);
  ASSERT_EQ(f.size(), 4u);
  EXPECT_FLOAT_EQ(f[0], 1.0f);
  EXPECT_NEAR(f[1], std::pow(10000.0, -0.25), 1e-7);
  float c[4], s[4];
  rope.Angles(f, 3, c, s);
  EXPECT_NEAR(c[0], std::cos(3.0), 1e-6);
  // Rotation keeps each pair's norm; position 0 is the identity.
  std::vector<float> x = Random(8, 4), y = x;
  rope.Apply(y.data(), 1, 8, c, s);
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(x[i] * x[i] + x[i + 4] * x[i + 4], y[i] * y[i] + y[i + 4] * y[i + 4], 1e-5);
  }
  rope.Angles(f, 0, c, s);
  y = x;
  rope.Apply(y.data(), 1, 8, c, s);
  EXPECT_EQ(x, y);
}

TEST(RopeTest, InterleavedPairsComeOutDeinterleaved) {
  RopeParams p;
  p.dim = 4;
  p.interleaved = true;
  Rope rope(p);
  float c[2] = {1, 1}, s[2] = {0, 0};  // identity angle
  float x[4] = {10, 11, 20, 21};       // pairs (10,11), (20,21)
  rope.Apply(x, 1, 4, c, s);
  EXPECT_EQ(std::vector<float>(x, x + 4), (std::vector<float>{10, 20, 11, 21}));
}

// No fixed-size scratch: a rotary dimension past 1024 works.
TEST(RopeTest, WideInterleavedHeads) {
  RopeParams p;
  p.dim = 2048;
  p.interleaved = true;
  Rope rope(p);
  std::vector<float> c(1024, 1.0f), s(1024, 0.0f), x(2048);
  for (int i = 0; i < 2048; ++i) x[i] = static_cast<float>(i);
  rope.Apply(x.data(), 1, 2048, c.data(), s.data());
  EXPECT_EQ(x[0], 0.0f);
  EXPECT_EQ(x[1], 2.0f);     // even channels first
  EXPECT_EQ(x[1024], 1.0f);  // then odd
  EXPECT_EQ(x[2047], 2047.0f);
}

TEST(RopeTest, ScalingTypes) {
  RopeParams base;
  base.dim = 16;
  base.max_position_embeddings = 32;
  std::vector<float> f0 = Rope(base).InvFreq(1);

  RopeParams lin = base;
  lin.kind = RopeKind::kLinear;
  lin.factor = 4;
  std::vector<float> fl = Rope(lin).InvFreq(1);
  for (size_t i = 0; i < f0.size(); ++i) EXPECT_FLOAT_EQ(fl[i], f0[i] / 4);

  RopeParams dyn = base;
  dyn.kind = RopeKind::kDynamic;
  dyn.factor = 2;
  Rope rd(dyn);
  EXPECT_EQ(rd.InvFreq(32), f0);  // within the trained length: unchanged
  std::vector<float> fd = rd.InvFreq(64);
  EXPECT_EQ(fd[0], f0[0]);
  for (size_t i = 1; i < f0.size(); ++i) EXPECT_LT(fd[i], f0[i]);

  RopeParams yarn = base;
  yarn.kind = RopeKind::kYarn;
  yarn.factor = 4;
  yarn.original_max_position_embeddings = 8;
  Rope ry(yarn);
  EXPECT_NEAR(ry.attention_scaling(), 0.1 * std::log(4.0) + 1, 1e-6);
  std::vector<float> fy = ry.InvFreq(1);
  EXPECT_FLOAT_EQ(fy[0], f0[0]);                // high frequencies extrapolate
  EXPECT_NEAR(fy.back(), f0.back() / 4, 1e-9);  // low frequencies interpolate

  RopeParams l3 = base;
  l3.kind = RopeKind::kLlama3;
  l3.factor = 8;
  l3.original_max_position_embeddings = 8192;
  std::vector<float> f3 = Rope(l3).InvFreq(1);
  EXPECT_EQ(f3[0], f0[0]);
  EXPECT_FLOAT_EQ(f3.back(), f0.back() / 8);
}

// Paged causal attention against a direct computation, with GQA, a
// sliding window and blocks of 3 positions.
// Against a double-precision computation, with head sizes that miss the
// vector loops and others that take them (v narrower than q, as in latent
// attention), and the AVX2 code equal to the portable loops bit for bit.
TEST(AttentionTest, MatchesDirectComputation) {
  const int heads = 4, kv_heads = 2, len = 23, block = 3;
  for (auto [hd, vhd] : {std::pair{5, 5}, {72, 40}, {64, 64}}) {
    for (int window : {0, 4}) {
      std::vector<float> keys = Random(len * kv_heads * hd, 7), vals = Random(len * kv_heads * vhd, 8);
      const int row = kv_heads * (hd + vhd);
      std::vector<std::vector<float>> blocks((len + block - 1) / block, std::vector<float>(block * row));
      for (int t = 0; t < len; ++t) {
        float* r = blocks[t / block].data() + (t % block) * row;
        std::copy(&keys[t * kv_heads * hd], &keys[(t + 1) * kv_heads * hd], r);
        std::copy(&vals[t * kv_heads * vhd], &vals[(t + 1) * kv_heads * vhd], r + kv_heads * hd);
      }
      std::vector<const float*> ptrs;
      for (auto& b : blocks) ptrs.push_back(b.data());
      KvPages kv{ptrs.data(), ptrs.data(), block, row, row, 0, kv_heads * hd};
      const int n = 9, first = len - n;
      std::vector<float> q = Random(n * heads * hd, 9), out(n * heads * vhd), portable(out.size());
      AttentionShape s{heads, kv_heads, hd, vhd, 0.37f, window};
      ThreadPool pool(2);
      CausalAttention(s, q.data(), n, first, kv, out.data(), &pool);
      CausalAttention(s, q.data(), n, first, kv, portable.data(), nullptr, /*avx2=*/false);
      EXPECT_EQ(out, portable) << "hd " << hd << " window " << window;
      for (int i = 0; i < n; ++i) {
        int pos = first + i;
        for (int h = 0; h < heads; ++h) {
          int g = h / (heads / kv_heads);
          std::vector<double> w;
          int lo = window ? std::max(0, pos - window + 1) : 0;
          double mx = -1e30;
          for (int t = lo; t <= pos; ++t) {
            double d = 0;
            for (int j = 0; j < hd; ++j) d += q[(i * heads + h) * hd + j] * keys[(t * kv_heads + g) * hd + j];
            w.push_back(d * 0.37);
            mx = std::max(mx, w.back());
          }
          double sum = 0;
          for (double& x : w) sum += (x = std::exp(x - mx));
          for (int j = 0; j < vhd; ++j) {
            double ref = 0;
            for (int t = lo; t <= pos; ++t) ref += w[t - lo] / sum * vals[(t * kv_heads + g) * vhd + j];
            ASSERT_NEAR(out[(i * heads + h) * vhd + j], ref, 1e-5) << "hd " << hd << " window " << window;
          }
        }
      }
    }
  }
}

TEST(GatingTest, SoftmaxTopKWithAndWithoutNormalisation) {
  float logits[4] = {1, 3, 2, 0};
  int ids[2];
  float w[2];
  GatingParams p;
  p.num_experts = 4;
  p.top_k = 2;
  RouteTokens(p, logits, 1, ids, w);
  double z = std::exp(1) + std::exp(3) + std::exp(2) + 1;
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(ids[1], 2);
  EXPECT_NEAR(w[0], std::exp(3) / z, 1e-6);
  EXPECT_NEAR(w[1], std::exp(2) / z, 1e-6);
  p.norm_topk_prob = true;
  RouteTokens(p, logits, 1, ids, w);
  EXPECT_NEAR(w[0], std::exp(3) / (std::exp(3) + std::exp(2)), 1e-6);
  EXPECT_NEAR(w[0] + w[1], 1.0, 1e-6);
}

TEST(GatingTest, SigmoidGroupLimitedWithBiasAndScaling) {
  // 4 groups of 2. Expert 0 alone scores highest, but group 0's pair sum is
  // below groups 2 and 3, so topk_group=2 must exclude it.
  float logits[8] = {3.0f, -4.0f, 0.5f, 0.4f, 1.0f, 1.0f, 1.2f, 0.9f};
  float bias[8] = {0, 0, 0, 0, 0, 0, 0, 0.5f};
  GatingParams p;
  p.num_experts = 8;
  p.top_k = 2;
  p.sigmoid = true;
  p.n_group = 4;
  p.topk_group = 2;
  p.score_bias = bias;
  p.norm_topk_prob = true;
  p.routed_scaling_factor = 2.5f;
  int ids[2];
  float w[2];
  RouteTokens(p, logits, 1, ids, w);
  auto sig = [](float x) { return 1 / (1 + std::exp(-x)); };
  // Selection uses score + bias: expert 7 (0.71 + 0.5) then 6.
  EXPECT_EQ(ids[0], 7);
  EXPECT_EQ(ids[1], 6);
  // Weights use the unbiased scores, normalised and scaled.
  double s7 = sig(0.9f), s6 = sig(1.2f);
  EXPECT_NEAR(w[0], 2.5 * s7 / (s7 + s6), 1e-6);
  EXPECT_NEAR(w[1], 2.5 * s6 / (s7 + s6), 1e-6);
}

TEST(GatingTest, TemperatureSoftmaxOverSelectedLogits) {
  float logits[4] = {1, 3, 2, 0};
  GatingParams p;
  p.num_experts = 4;
  p.top_k = 2;
  p.temperature = 0.1f;
  int ids[2];
  float w[2];
  RouteTokens(p, logits, 1, ids, w);
  double a = std::exp(30.0), b = std::exp(20.0);
  EXPECT_NEAR(w[0], a / (a + b), 1e-6);
  EXPECT_NEAR(w[1], b / (a + b), 1e-6);
}

TEST(GatingTest, DynamicKTakesSmallestKReachingThreshold) {
  // Probabilities ~ {0.6, 0.25, 0.1, 0.05}.
  float logits[4] = {std::log(0.6f), std::log(0.25f), std::log(0.1f), std::log(0.05f)};
  GatingParams p;
  p.num_experts = 4;
  p.top_k = 2;
  p.dynamic_k_min = 1;
  p.dynamic_k_max = 3;
  int ids[3];
  float w[3];
  auto k_for = [&](float threshold) {
    p.dynamic_k_p = threshold;
    RouteTokens(p, logits, 1, ids, w);
    int k = 0;
    while (k < 3 && ids[k] >= 0) ++k;
    return k;
  };
  EXPECT_EQ(k_for(0.5f), 1);
  EXPECT_EQ(k_for(0.8f), 2);
  EXPECT_EQ(k_for(0.9f), 3);
  EXPECT_EQ(k_for(0.99f), 3);  // capped at k_max
  EXPECT_EQ(w[2], w[2]);
  p.dynamic_k_min = 2;
  EXPECT_EQ(k_for(0.5f), 2);  // at least k_min
  EXPECT_EQ(ids[2], -1);
  EXPECT_EQ(w[2], 0.0f);
}

}  // namespace
}  // namespace moemesh
