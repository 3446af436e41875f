// CUDA kernels against the CPU kernels on random inputs of many shapes
// (DESIGN.md: every CUDA kernel is tested against its CPU kernel). Labelled
// `gpu`; skips where no GPU is present. Run on the GPU machine with
// tools/gpu/run.sh.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/experts/cpu_expert_device.h"
#include "core/experts/expert_executor.h"
#include "core/experts/expert_work.h"
#include "core/kernels/cuda/expert_groups.h"
#include "core/kernels/cpu/norm.h"
#include "core/kernels/cuda/expert_ffn.h"
#include "core/kernels/cuda/grouped_gemm.h"
#include "core/kernels/cpu/attention.h"
#include "core/kernels/cpu/rope.h"
#include "core/kernels/cuda/attention.h"
#include "core/kernels/cuda/dense.h"
#include "core/kernels/cuda/flash_decode.h"
#include "core/kernels/cuda/flash_prefill.h"
#include "core/kernels/cuda/gemm.h"
#include "core/kernels/cuda/gating.h"
#include "core/kernels/cuda/qk_cache.h"
#include "core/kernels/cuda/rope.h"
#include "core/kernels/cuda/sampling.h"
#include "core/engine/sampler.h"
#include "core/model/weights.h"
#include "core/tensor/dtype.h"
#include "core/kernels/cuda/cuda_runtime_util.h"
#include "core/kernels/cuda/norm.h"
#include "core/tensor/rel_error.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

class CudaKernelsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

std::unique_ptr<DeviceBuffer> Upload(const std::vector<float>& v) {
  auto b = DeviceBuffer::Allocate(v.size() * sizeof(float));
  EXPECT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE((*b)->CopyFrom(v.data(), v.size() * sizeof(float)).ok());
  return std::move(*b);
}

// A GPU router's host KV tier: page-locked memory in one piece, which
// IsPageLocked tells from ordinary memory (anywhere inside it), and from
// which a copy to the device arrives whole.
TEST_F(CudaKernelsTest, PinnedHostArenaIsPageLocked) {
  constexpr size_t kBytes = size_t{4} << 20;
  absl::StatusOr<std::shared_ptr<void>> arena = PinnedHostArena(kBytes);
  ASSERT_TRUE(arena.ok()) << arena.status();
  char* base = static_cast<char*>(arena->get());
  EXPECT_TRUE(IsPageLocked(base));
  EXPECT_TRUE(IsPageLocked(base + kBytes / 2 + 3));
  std::vector<char> pageable(1 << 16);
  EXPECT_FALSE(IsPageLocked(pageable.data()));
  EXPECT_FALSE(IsPageLocked(&pageable));  // the stack
  for (size_t i = 0; i < (1 << 20); ++i) base[kBytes / 2 + i] = static_cast<char>(i * 7);
  auto device = DeviceBuffer::Allocate(1 << 20);
  ASSERT_TRUE(device.ok()) << device.status();
  ASSERT_TRUE((*device)->CopyFrom(base + kBytes / 2, 1 << 20).ok());
  std::vector<char> back(1 << 20);
  ASSERT_TRUE((*device)->CopyTo(back.data(), back.size()).ok());
  EXPECT_EQ(std::memcmp(back.data(), base + kBytes / 2, back.size()), 0);
}

TEST_F(CudaKernelsTest, RmsNormMatchesCpu) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (auto [rows, n] : std::vector<std::pair<int, int>>{{1, 1}, {1, 7}, {3, 33}, {17, 256}, {64, 4096},
                                                          {5, 7168}, {1000, 129}}) {
    std::vector<float> x(static_cast<size_t>(rows) * n), w(n);
    for (float& v : x) v = normal(rng) * 3.f;
    for (float& v : w) v = normal(rng);
    std::vector<float> want(x.size());
    RmsNorm(x.data(), w.data(), rows, n, 1e-6f, want.data());
    auto dx = Upload(x), dw = Upload(w);
    auto dy = DeviceBuffer::Allocate(x.size() * sizeof(float));
    ASSERT_TRUE(dy.ok());
    ASSERT_TRUE((*dy)->Fill(0xff).ok());  // NaN poison: every element must be written
    ASSERT_TRUE(RmsNormCuda(dx->as<float>(), dw->as<float>(), rows, n, 1e-6f, (*dy)->as<float>(), nullptr).ok());
    ASSERT_TRUE(CudaSynchronize(nullptr).ok());
    std::vector<float> got(x.size());
    ASSERT_TRUE((*dy)->CopyTo(got.data(), got.size() * sizeof(float)).ok());
    EXPECT_LT(RelError(got, want), 1e-6) << rows << "x" << n;  // fp32 both ways
  }
}

// The residual and the norm in one launch: hidden gets the sum, out the
// norm of it, as an Add and RmsNorm would leave them.
TEST_F(CudaKernelsTest, AddRmsNormMatchesAddThenNorm) {
  std::mt19937 rng(8);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (auto [rows, n] : std::vector<std::pair<int, int>>{{1, 7}, {3, 2048}, {33, 4096}}) {
    std::vector<float> h(static_cast<size_t>(rows) * n), d(h.size()), w(n);
    for (float& v : h) v = normal(rng);
    for (float& v : d) v = normal(rng);
    for (float& v : w) v = normal(rng);
    std::vector<float> want_h = h, want(h.size());
    for (size_t i = 0; i < h.size(); ++i) want_h[i] += d[i];
    RmsNorm(want_h.data(), w.data(), rows, n, 1e-5f, want.data());
    auto dh = Upload(h), dd = Upload(d), dw = Upload(w);
    auto dy = DeviceBuffer::Allocate(h.size() * sizeof(float));
    ASSERT_TRUE(dy.ok());
    ASSERT_TRUE(AddRmsNormCuda(dh->as<float>(), dd->as<float>(), dw->as<float>(), rows, n, 1e-5f,
                               (*dy)->as<float>(), nullptr)
                    .ok());
    std::vector<float> got_h(h.size()), got(h.size());
    ASSERT_TRUE(dh->CopyTo(got_h.data(), got_h.size() * sizeof(float)).ok());
    ASSERT_TRUE((*dy)->CopyTo(got.data(), got.size() * sizeof(float)).ok());
    EXPECT_EQ(got_h, want_h) << rows << "x" << n;  // one fp32 addition each
    EXPECT_LT(RelError(got, want), 1e-6) << rows << "x" << n;
  }
}

std::vector<uint16_t> RandomBf16(size_t n, std::mt19937& rng, float scale) {
  std::normal_distribution<float> normal(0.f, scale);
  std::vector<uint16_t> v(n);
  for (uint16_t& x : v) x = F32ToBf16(normal(rng));
  return v;
}

// The layers' products, bf16 and fp32 weights, at decode row counts (our
// kernel: 1 to 8 rows; unaligned or odd widths fall back to cuBLAS) and
// beyond (cuBLAS), against a double-precision product of the same rounded
// inputs: within 1e-5 of the norm (fp32 sums in another order).
TEST_F(CudaKernelsTest, LinearMatchesCpu) {
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0.f, 1.f);
  // Our kernel wherever it may run, the default, and cuBLAS alone.
  for (int skinny_rows : {CudaGemm::kSkinnyMaxRows, CudaGemm::kSkinnyDefaultRows, 0}) {
    auto gemm = CudaGemm::Create(skinny_rows);
    ASSERT_TRUE(gemm.ok()) << gemm.status();
    struct Shape {
      int n, m, k;
    };
    for (const Shape& s : {Shape{1, 4096, 2048}, Shape{3, 512, 2048}, Shape{8, 130, 72}, Shape{1, 1, 2048},
                           Shape{2, 128, 2047}, Shape{9, 300, 256}, Shape{40, 96, 512}}) {
      std::vector<float> x(static_cast<size_t>(s.n) * s.k), wf(static_cast<size_t>(s.m) * s.k);
      for (float& v : x) v = normal(rng);
      for (float& v : wf) v = normal(rng) * 0.05f;
      std::vector<uint16_t> wb = RandomBf16(wf.size(), rng, 0.05f);
      std::vector<float> want_b(static_cast<size_t>(s.n) * s.m), want_f(want_b.size());
      for (int r = 0; r < s.n; ++r) {
        for (int o = 0; o < s.m; ++o) {
          double b = 0, f = 0;
          for (int i = 0; i < s.k; ++i) {
            const float xi = x[static_cast<size_t>(r) * s.k + i];
            b += static_cast<double>(Bf16ToF32(F32ToBf16(xi))) * Bf16ToF32(wb[static_cast<size_t>(o) * s.k + i]);
            f += static_cast<double>(xi) * wf[static_cast<size_t>(o) * s.k + i];
          }
          want_b[static_cast<size_t>(r) * s.m + o] = static_cast<float>(b);
          want_f[static_cast<size_t>(r) * s.m + o] = static_cast<float>(f);
        }
      }
      auto dx = Upload(x), dwf = Upload(wf);
      auto dwb = DeviceBuffer::Allocate(wb.size() * sizeof(uint16_t));
      auto db = DeviceBuffer::Allocate(want_b.size() * sizeof(float));
      auto df = DeviceBuffer::Allocate(want_f.size() * sizeof(float));
      ASSERT_TRUE(dwb.ok() && db.ok() && df.ok());
      ASSERT_TRUE((*dwb)->CopyFrom(wb.data(), wb.size() * sizeof(uint16_t)).ok());
      ASSERT_TRUE((*gemm)->LinearBf16(dx->as<float>(), s.n, (*dwb)->as<uint16_t>(), s.m, s.k, (*db)->as<float>(),
                                      nullptr)
                      .ok());
      ASSERT_TRUE(
          (*gemm)->LinearF32(dx->as<float>(), s.n, dwf->as<float>(), s.m, s.k, (*df)->as<float>(), nullptr).ok());
      std::vector<float> got_b(want_b.size()), got_f(want_f.size());
      ASSERT_TRUE((*db)->CopyTo(got_b.data(), got_b.size() * sizeof(float)).ok());
      ASSERT_TRUE((*df)->CopyTo(got_f.data(), got_f.size() * sizeof(float)).ok());
      EXPECT_LT(RelError(got_b, want_b), 1e-5) << s.n << "x" << s.m << "x" << s.k << " bf16 " << skinny_rows;
      EXPECT_LT(RelError(got_f, want_f), 1e-5) << s.n << "x" << s.m << "x" << s.k << " fp32 " << skinny_rows;
    }
  }
  EXPECT_FALSE(CudaGemm::Create(CudaGemm::kSkinnyMaxRows + 1).ok());
}

std::vector<float> Download(const DeviceBuffer& b, size_t floats) {
  std::vector<float> v(floats);
  EXPECT_TRUE(b.CopyTo(v.data(), floats * sizeof(float)).ok());
  return v;
}

// A layer's query, key and value products in one launch (decode steps) or
// one each (wider): the bits of a LinearBf16 and an AddBiasCuda each.
TEST_F(CudaKernelsTest, LinearsBf16EqualOneProductAndBiasEach) {
  std::mt19937 rng(21);
  std::normal_distribution<float> normal(0.f, 1.f);
  const int k = 520, ms[3] = {256, 40, 72};
  std::vector<std::unique_ptr<DeviceBuffer>> w, bias;
  for (int m : ms) {
    std::vector<uint16_t> wb = RandomBf16(static_cast<size_t>(m) * k, rng, 0.05f);
    auto d = DeviceBuffer::Allocate(wb.size() * sizeof(uint16_t));
    ASSERT_TRUE(d.ok());
    ASSERT_TRUE((*d)->CopyFrom(wb.data(), wb.size() * sizeof(uint16_t)).ok());
    w.push_back(std::move(*d));
    std::vector<float> b(m);
    for (float& v : b) v = normal(rng);
    bias.push_back(Upload(b));
  }
  for (int skinny_rows : {CudaGemm::kSkinnyMaxRows, CudaGemm::kSkinnyDefaultRows}) {
    auto gemm = CudaGemm::Create(skinny_rows);
    ASSERT_TRUE(gemm.ok()) << gemm.status();
    for (int n : {1, 2, 5, 9}) {
      std::vector<float> x(static_cast<size_t>(n) * k);
      for (float& v : x) v = normal(rng);
      auto dx = Upload(x);
      std::vector<std::unique_ptr<DeviceBuffer>> one, fused;
      std::vector<CudaGemm::Bf16Product> products;
      for (int i = 0; i < 3; ++i) {
        one.push_back(Upload(std::vector<float>(static_cast<size_t>(n) * ms[i], 0.f)));
        fused.push_back(Upload(std::vector<float>(static_cast<size_t>(n) * ms[i], 0.f)));
        const float* b = i == 1 ? nullptr : bias[i]->as<float>();  // the key without a bias
        products.push_back({w[i]->as<uint16_t>(), ms[i], b, fused[i]->as<float>()});
        ASSERT_TRUE((*gemm)->LinearBf16(dx->as<float>(), n, w[i]->as<uint16_t>(), ms[i], k, one[i]->as<float>(),
                                        nullptr)
                        .ok());
        if (b != nullptr) {
          ASSERT_TRUE(AddBiasCuda(one[i]->as<float>(), b, n, ms[i], nullptr).ok());
        }
      }
      ASSERT_TRUE((*gemm)->LinearsBf16(dx->as<float>(), n, k, products, nullptr).ok());
      for (int i = 0; i < 3; ++i) {
        const size_t floats = static_cast<size_t>(n) * ms[i];
        EXPECT_EQ(Download(*fused[i], floats), Download(*one[i], floats))
            << "product " << i << ", " << n << " rows, skinny up to " << skinny_rows;
      }
    }
    std::vector<CudaGemm::Bf16Product> four(CudaGemm::kMaxSkinnyProducts + 1);
    EXPECT_EQ((*gemm)->LinearsBf16(nullptr, 1, k, four, nullptr).code(), absl::StatusCode::kInvalidArgument);
  }
}

// What a grouped-query layer does between its products and attention, in
// one launch: Qwen3's per-head norm (or none), the rotation (whole or
// partial, interleaved or not) and the cache's rows in each of its types,
// the bits of RmsNormCuda, RopeCuda and ScatterKvRowsCuda one after another.
TEST_F(CudaKernelsTest, NormRotateCacheEqualsItsParts) {
  std::mt19937 rng(23);
  std::normal_distribution<float> normal(0.f, 1.f);
  struct Case {
    int head_dim, rope_dim;
    bool interleaved, norm;
  };
  const int tokens = 3, q_heads = 4, kv_heads = 2;
  for (const Case& c : {Case{128, 128, false, true}, Case{128, 128, false, false}, Case{64, 32, true, true},
                        Case{72, 40, false, true}, Case{320, 64, true, true}}) {
    for (KvDType dtype : {KvDType::kF32, KvDType::kBf16, KvDType::kF8E4M3}) {
      SCOPED_TRACE(absl::StrCat("head_dim ", c.head_dim, " rope ", c.rope_dim, c.interleaved ? " interleaved" : "",
                                c.norm ? " norm " : " ", KvDTypeName(dtype)));
      const int hd = c.head_dim, q_w = q_heads * hd, kv_w = kv_heads * hd;
      std::vector<float> q(static_cast<size_t>(tokens) * q_w), k(static_cast<size_t>(tokens) * kv_w), v(k.size());
      for (float& x : q) x = normal(rng);
      for (float& x : k) x = normal(rng) * 3;
      for (float& x : v) x = normal(rng);
      std::vector<float> qn(hd), kn(hd), inv(c.rope_dim / 2);
      for (float& x : qn) x = 1 + 0.1f * normal(rng);
      for (float& x : kn) x = 1 + 0.1f * normal(rng);
      for (int i = 0; i < c.rope_dim / 2; ++i) inv[i] = std::pow(10000.f, -2.f * i / c.rope_dim);
      const std::vector<int> positions = {7, 0, 2999};
      auto dpos = DeviceBuffer::Allocate(tokens * sizeof(int));
      ASSERT_TRUE(dpos.ok());
      ASSERT_TRUE((*dpos)->CopyFrom(positions.data(), tokens * sizeof(int)).ok());
      auto dqn = Upload(qn), dkn = Upload(kn), dinv = Upload(inv), dv = Upload(v);
      KvStore store;
      store.dtype = dtype;
      if (dtype == KvDType::kF8E4M3) store.k_scale = 0.5f, store.v_scale = 0.25f;
      const size_t row_bytes = 2 * kv_w * KvDTypeBytes(dtype);
      // Each way into its own cache, rows reversed.
      auto run = [&](bool fused, std::vector<float>* q_out, std::vector<float>* k_out, std::string* cache_out) {
        auto dq = Upload(q), dk = Upload(k);
        auto cache = DeviceBuffer::Allocate(tokens * row_bytes);
        ASSERT_TRUE(cache.ok());
        ASSERT_TRUE((*cache)->Fill(0).ok());
        std::vector<void*> kd(tokens), vd(tokens);
        for (int t = 0; t < tokens; ++t) {
          kd[t] = (*cache)->as<char>() + (tokens - 1 - t) * row_bytes;
          vd[t] = static_cast<char*>(kd[t]) + row_bytes / 2;
        }
        auto dkd = DeviceBuffer::Allocate(tokens * sizeof(void*)), dvd = DeviceBuffer::Allocate(tokens * sizeof(void*));
        ASSERT_TRUE(dkd.ok() && dvd.ok());
        ASSERT_TRUE((*dkd)->CopyFrom(kd.data(), tokens * sizeof(void*)).ok());
        ASSERT_TRUE((*dvd)->CopyFrom(vd.data(), tokens * sizeof(void*)).ok());
        const float scaling = 0.9f;
        if (fused) {
          QkRows rows;
          rows.q = dq->as<float>(), rows.k = dk->as<float>(), rows.v = dv->as<float>(), rows.tokens = tokens;
          rows.q_heads = q_heads, rows.kv_heads = kv_heads, rows.head_dim = hd;
          QkNorm norm;
          if (c.norm) norm.q_weight = dqn->as<float>(), norm.k_weight = dkn->as<float>(), norm.eps = 1e-6f;
          QkRope rope;
          rope.inv_freq = dinv->as<float>(), rope.attention_scaling = scaling, rope.dim = c.rope_dim;
          rope.interleaved = c.interleaved, rope.positions = (*dpos)->as<int>();
          ASSERT_TRUE(NormRotateCacheCuda(rows, norm, rope, (*dkd)->as<void*>(), (*dvd)->as<void*>(), store, nullptr)
                          .ok());
        } else {
          if (c.norm) {
            ASSERT_TRUE(RmsNormCuda(dq->as<float>(), dqn->as<float>(), tokens * q_heads, hd, 1e-6f, dq->as<float>(),
                                    nullptr)
                            .ok());
            ASSERT_TRUE(RmsNormCuda(dk->as<float>(), dkn->as<float>(), tokens * kv_heads, hd, 1e-6f,
                                    dk->as<float>(), nullptr)
                            .ok());
          }
          ASSERT_TRUE(RopeCuda(dinv->as<float>(), scaling, c.rope_dim, c.interleaved, (*dpos)->as<int>(), tokens,
                               q_heads, q_w, hd, dq->as<float>(), nullptr)
                          .ok());
          ASSERT_TRUE(RopeCuda(dinv->as<float>(), scaling, c.rope_dim, c.interleaved, (*dpos)->as<int>(), tokens,
                               kv_heads, kv_w, hd, dk->as<float>(), nullptr)
                          .ok());
          ASSERT_TRUE(ScatterKvRowsCuda(dk->as<float>(), kv_w, (*dkd)->as<void*>(), dv->as<float>(), kv_w,
                                        (*dvd)->as<void*>(), tokens, store, nullptr)
                          .ok());
        }
        *q_out = Download(*dq, q.size());
        *k_out = Download(*dk, k.size());
        cache_out->assign(tokens * row_bytes, '\0');
        ASSERT_TRUE((*cache)->CopyTo(cache_out->data(), cache_out->size()).ok());
      };
      std::vector<float> q1, k1, q2, k2;
      std::string c1, c2;
      run(false, &q1, &k1, &c1);
      run(true, &q2, &k2, &c2);
      EXPECT_EQ(q2, q1);
      EXPECT_EQ(k2, k1);
      EXPECT_TRUE(c2 == c1) << "the cache rows differ";
      EXPECT_NE(q2, q);  // it did something
    }
  }
  QkRows rows;
  rows.tokens = 1, rows.q_heads = 1, rows.kv_heads = 1, rows.head_dim = 64;
  QkRope odd;
  odd.dim = 33;
  EXPECT_EQ(NormRotateCacheCuda(rows, QkNorm{}, odd, nullptr, nullptr, KvStore{}, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  QkRope wide;
  wide.dim = 66;
  EXPECT_EQ(NormRotateCacheCuda(rows, QkNorm{}, wide, nullptr, nullptr, KvStore{}, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

// Keys and values of a step's rows to their cache rows (row pointers) in
// one launch, and keys alone (the latent cache), stored as each cache type:
// fp32 as is, bf16 and FP8 (value / scale) rounded as the host rounds them.
TEST_F(CudaKernelsTest, ScatterKvRowsReachTheirCacheRows) {
  const int rows = 5, kw = 24, vw = 16;
  std::vector<float> k(rows * kw), v(rows * vw);
  for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<float>(i) * 1.37f - 40.f;
  for (size_t i = 0; i < v.size(); ++i) v[i] = -static_cast<float>(i) * 0.61f - 1;
  k[3] = 1e6f;  // past FP8's range: saturates at 448 * scale
  k[4] = -1e6f;
  for (KvDType dtype : {KvDType::kF32, KvDType::kBf16, KvDType::kF8E4M3}) {
    SCOPED_TRACE(std::string(KvDTypeName(dtype)));
    KvStore store;
    store.dtype = dtype;
    if (dtype == KvDType::kF8E4M3) store.k_scale = 0.5f, store.v_scale = 0.25f;
    const size_t elem = KvDTypeBytes(dtype), row_bytes = (kw + vw) * elem;
    // The stored bytes of x, as the host rounds them.
    auto stored = [&](float x, float scale) {
      std::string b(elem, '\0');
      if (dtype == KvDType::kF32) std::memcpy(b.data(), &x, 4);
      if (dtype == KvDType::kBf16) {
        const uint16_t h = F32ToBf16(x);
        std::memcpy(b.data(), &h, 2);
      }
      if (dtype == KvDType::kF8E4M3) b[0] = static_cast<char>(F32ToF8E4M3(x / scale));
      return b;
    };
    for (bool with_values : {true, false}) {
      auto dk = Upload(k), dv = Upload(v);
      auto cache = DeviceBuffer::Allocate(2 * rows * row_bytes);
      ASSERT_TRUE(cache.ok());
      ASSERT_TRUE((*cache)->Fill(0).ok());
      // Row r goes to cache row 2 * (rows - 1 - r): reversed, with gaps.
      std::vector<void*> kd(rows), vd(rows);
      char* base = (*cache)->as<char>();
      for (int r = 0; r < rows; ++r) {
        kd[r] = base + static_cast<size_t>(2 * (rows - 1 - r)) * row_bytes;
        vd[r] = static_cast<char*>(kd[r]) + kw * elem;
      }
      auto dkd = DeviceBuffer::Allocate(rows * sizeof(void*)), dvd = DeviceBuffer::Allocate(rows * sizeof(void*));
      ASSERT_TRUE(dkd.ok() && dvd.ok());
      ASSERT_TRUE((*dkd)->CopyFrom(kd.data(), rows * sizeof(void*)).ok());
      ASSERT_TRUE((*dvd)->CopyFrom(vd.data(), rows * sizeof(void*)).ok());
      ASSERT_TRUE(ScatterKvRowsCuda(dk->as<float>(), kw, (*dkd)->as<void*>(), with_values ? dv->as<float>() : nullptr,
                                    vw, (*dvd)->as<void*>(), rows, store, nullptr)
                      .ok());
      std::string got(2 * rows * row_bytes, '\0');
      ASSERT_TRUE((*cache)->CopyTo(got.data(), got.size()).ok());
      for (int r = 0; r < rows; ++r) {
        const char* row = got.data() + static_cast<size_t>(2 * (rows - 1 - r)) * row_bytes;
        for (int j = 0; j < kw; ++j) {
          EXPECT_EQ(std::string(row + j * elem, elem), stored(k[r * kw + j], store.k_scale)) << r << "," << j;
        }
        for (int j = 0; j < vw; ++j) {
          EXPECT_EQ(std::string(row + (kw + j) * elem, elem),
                    with_values ? stored(v[r * vw + j], store.v_scale) : std::string(elem, '\0'))
              << r << "," << j;
        }
      }
      for (size_t i = 0; i < got.size(); i += 2 * row_bytes) {  // the gaps stay untouched
        EXPECT_EQ(got.substr(i + row_bytes, row_bytes), std::string(row_bytes, '\0'));
      }
    }
  }
  KvStore bad;
  bad.dtype = KvDType::kF8E4M3;
  bad.k_scale = 0;
  EXPECT_EQ(ScatterKvRowsCuda(nullptr, 4, nullptr, nullptr, 4, nullptr, 1, bad, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

// 32 to 71 rows per expert: padded sizes that groups share, some exact.
std::vector<int> ManyGroups(int experts) {
  std::vector<int> rows;
  for (int e = 0; e < experts; ++e) rows.push_back(32 + (e * 7) % 40);
  return rows;
}

// Every expert of a layer with mixed group sizes (empty, 1 row, more rows
// than one pass of the decode kernel takes, enough for the GEMM path, row
// counts that the batched GEMMs pad into shared calls), at
// shapes that are not multiples of 16, with gate and up adjacent (one GEMM)
// or apart, through each path, against ComputeExpertRows on the CPU. The
// inputs are bf16 values, so the only roundings are of the activations
// between the two products (bf16 on the GPU): within 5e-3 of the norm.
TEST_F(CudaKernelsTest, ExpertFfnMatchesCpu) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.f, 1.f);
  struct Shape {
    int hidden, inter, experts;
    std::vector<int> rows;  // per expert
  };
  for (const Shape& sh : {Shape{64, 96, 4, {1, 0, 3, 2}}, Shape{100, 37, 3, {9, 1, 70}},
                          Shape{1024, 352, 8, {0, 1, 2, 8, 0, 33, 5, 1}}, Shape{7, 5, 2, {1, 4}},
                          Shape{512, 1408, 4, {64, 17, 130, 0}},
                          Shape{256, 160, 8, {33, 40, 48, 64, 100, 0, 39, 36}},
                          // Batched GEMMs (18 groups with gate and up adjacent): row counts
                          // that share a padded size, some without padding; and a group
                          // large enough to run alone.
                          Shape{128, 96, 36, ManyGroups(36)}, Shape{126, 40, 34, ManyGroups(34)},
                          Shape{64, 48, 2, {600, 3}}}) {
    const int h = sh.hidden, in = sh.inter;
    // The grouped GEMM must not be skipped where it should run.
    if (CudaComputeCapability() == 90) {
      EXPECT_EQ(CudaGroupedGemm::Supported(h, in), h % 8 == 0 && in % 8 == 0);
    }
    std::vector<std::vector<uint16_t>> gate_up, down;
    std::vector<std::unique_ptr<DeviceBuffer>> dgate_up, dup, ddown;
    for (int e = 0; e < sh.experts; ++e) {
      gate_up.push_back(RandomBf16(2 * static_cast<size_t>(in) * h, rng, 0.1f));
      down.push_back(RandomBf16(static_cast<size_t>(h) * in, rng, 0.1f));
      for (auto [host, dev] : {std::pair{&gate_up.back(), &dgate_up}, {&down.back(), &ddown}}) {
        auto b = DeviceBuffer::Allocate(host->size() * 2);
        ASSERT_TRUE(b.ok());
        ASSERT_TRUE((*b)->CopyFrom(host->data(), host->size() * 2).ok());
        dev->push_back(std::move(*b));
      }
      // Odd experts also get a separate copy of `up`, so that both layouts run.
      auto u = DeviceBuffer::Allocate(static_cast<size_t>(in) * h * 2);
      ASSERT_TRUE(u.ok());
      ASSERT_TRUE((*u)->CopyFrom(gate_up.back().data() + static_cast<size_t>(in) * h, (*u)->bytes()).ok());
      dup.push_back(std::move(*u));
    }
    // A batch of tokens; each expert takes `rows[e]` of them (random tokens).
    const int tokens = 40;
    std::vector<float> hidden(static_cast<size_t>(tokens) * h);
    for (float& v : hidden) v = Bf16ToF32(F32ToBf16(normal(rng)));
    // `rotated`: the same rows, each group with the next expert's weights,
    // run again on the same instance (its weight tables change between
    // calls).
    std::vector<float> x, wts, want, want_rotated;
    std::vector<ExpertFfnGroup> groups, rotated;
    auto weights_of = [&](int e) {
      const uint16_t* up_host = gate_up[e].data() + static_cast<size_t>(in) * h;
      return FfnWeights{{DType::kBF16, in, h, gate_up[e].data()}, {DType::kBF16, in, h, up_host},
                        {DType::kBF16, h, in, down[e].data()}};
    };
    auto group_of = [&](int e, int offset, int n) {
      const uint16_t* g = dgate_up[e]->as<uint16_t>();
      const uint16_t* u = e % 2 ? dup[e]->as<uint16_t>() : g + static_cast<size_t>(in) * h;
      return ExpertFfnGroup{g, u, ddown[e]->as<uint16_t>(), offset, n};
    };
    for (int e = 0; e < sh.experts; ++e) {
      std::vector<int> rows;
      std::vector<float> w;
      for (int i = 0; i < sh.rows[e]; ++i) {
        rows.push_back(static_cast<int>(rng() % tokens));
        w.push_back(0.1f + static_cast<float>(rng() % 100) / 100.f);
      }
      const int next = (e + 1) % sh.experts, offset = static_cast<int>(wts.size()), n = static_cast<int>(rows.size());
      std::vector<float> o(rows.size() * h), o_rotated(rows.size() * h);
      ComputeExpertRows(weights_of(e), hidden.data(), h, rows, w, o.data(), nullptr);
      ComputeExpertRows(weights_of(next), hidden.data(), h, rows, w, o_rotated.data(), nullptr);
      groups.push_back(group_of(e, offset, n));
      rotated.push_back(group_of(next, offset, n));
      for (int r : rows) x.insert(x.end(), hidden.begin() + static_cast<size_t>(r) * h,
                                  hidden.begin() + static_cast<size_t>(r + 1) * h);
      wts.insert(wts.end(), w.begin(), w.end());
      want.insert(want.end(), o.begin(), o.end());
      want_rotated.insert(want_rotated.end(), o_rotated.begin(), o_rotated.end());
    }
    const size_t total = wts.size();
    auto dx = Upload(x), dw = Upload(wts);
    // The default (each group's path by its rows); everything through
    // cuBLAS on one stream and on several; everything through the grouped
    // GEMM (where supported); only groups of up to 128 rows, and of up to
    // 50 (the rest of ManyGroups in batched cuBLAS calls); everything
    // through the decode kernel.
    auto options = [](int gemm_min_rows, int streams, bool grouped, int grouped_max_rows) {
      CudaExpertFfn::Options o;
      o.gemm_min_rows = o.grouped_min_rows = gemm_min_rows;
      o.gemm_streams = streams;
      o.grouped_gemm = grouped;
      o.grouped_max_rows = o.grouped_max_rows_few_groups = grouped_max_rows;
      return o;
    };
    for (const CudaExpertFfn::Options& opt :
         {CudaExpertFfn::Options(), options(1, 1, false, 0), options(1, 4, false, 0), options(1, 4, true, 1 << 30),
          options(1, 4, true, 128), options(1, 4, true, 50), options(1 << 30, 4, false, 0)}) {
      auto ffn = CudaExpertFfn::Create(h, in, opt);
      ASSERT_TRUE(ffn.ok()) << ffn.status();
      auto out = DeviceBuffer::Allocate(std::max<size_t>(1, total * h * sizeof(float)));
      ASSERT_TRUE(out.ok());
      for (bool rotate : {false, true}) {
        ASSERT_TRUE((*out)->Fill(0xff).ok());  // NaN poison
        absl::Status st =
            (*ffn)->Run(dx->as<float>(), dw->as<float>(), rotate ? rotated : groups, (*out)->as<float>(), nullptr);
        ASSERT_TRUE(st.ok()) << st;
        ASSERT_TRUE(CudaSynchronize(nullptr).ok());
        std::vector<float> got(total * h);
        ASSERT_TRUE((*out)->CopyTo(got.data(), got.size() * sizeof(float)).ok());
        EXPECT_LT(RelError(got, rotate ? want_rotated : want), 5e-3)
            << h << "x" << in << ", gemm_min_rows " << opt.gemm_min_rows << ", streams " << opt.gemm_streams
            << ", grouped " << opt.grouped_gemm << " up to " << opt.grouped_max_rows << ", rotated " << rotate;
      }
    }
  }
}

// Softmax top-k (Mixtral, Qwen3-MoE), sigmoid with bias and groups
// (DeepSeek-V3, and the most experts and groups the rule takes), and the
// temperature and dynamic-k extensions, against RouteTokens. Expert
// ids must agree except where two candidates' scores tie to within 1e-6
// (GPU and CPU exp differ in the last bit); weights within 1e-5.
TEST_F(CudaKernelsTest, RoutingMatchesCpu) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.f, 1.f);
  auto configs = std::vector<GatingParams>(7);
  configs[0].num_experts = 8, configs[0].top_k = 2;                                  // Mixtral
  configs[1].num_experts = 60, configs[1].top_k = 4, configs[1].norm_topk_prob = true;  // Qwen2-MoE-ish
  configs[2].num_experts = 256, configs[2].top_k = 8, configs[2].sigmoid = true;      // DeepSeek-V3
  configs[2].norm_topk_prob = true, configs[2].n_group = 8, configs[2].topk_group = 4;
  configs[2].routed_scaling_factor = 2.5f;
  configs[3].num_experts = 64, configs[3].top_k = 6, configs[3].temperature = 0.7f;
  configs[4].num_experts = 64, configs[4].top_k = 2, configs[4].dynamic_k_min = 1;
  configs[4].dynamic_k_max = 8, configs[4].dynamic_k_p = 0.6f;
  configs[5].num_experts = 128, configs[5].top_k = 8, configs[5].norm_topk_prob = true;  // Qwen3-MoE
  configs[6].num_experts = kMaxGatingExperts, configs[6].top_k = 16, configs[6].sigmoid = true;
  configs[6].n_group = kMaxGatingGroups, configs[6].topk_group = 5;  // the limits: 16 experts a lane
  for (const GatingParams& base : configs) {
    const int n = 300, ec = base.num_experts, slots = base.SlotsPerToken();
    std::vector<float> logits(static_cast<size_t>(n) * ec), bias(ec);
    for (float& v : logits) v = normal(rng) * 2.f;
    for (float& v : bias) v = normal(rng) * 0.1f;
    GatingParams cpu = base;
    if (cpu.sigmoid) cpu.score_bias = bias.data();
    std::vector<int> want_ids(static_cast<size_t>(n) * slots);
    std::vector<float> want_w(want_ids.size());
    RouteTokens(cpu, logits.data(), n, want_ids.data(), want_w.data());
    auto dl = Upload(logits), db = Upload(bias);
    auto dids = DeviceBuffer::Allocate(want_ids.size() * sizeof(int));
    auto dw = DeviceBuffer::Allocate(want_w.size() * sizeof(float));
    ASSERT_TRUE(dids.ok() && dw.ok());
    GatingParams gpu = base;
    if (gpu.sigmoid) gpu.score_bias = db->as<float>();
    // Counted as well, onto counts from before.
    std::vector<int> counts(ec, 5);
    auto dcounts = DeviceBuffer::Allocate(ec * sizeof(int));
    ASSERT_TRUE(dcounts.ok());
    ASSERT_TRUE((*dcounts)->CopyFrom(counts.data(), ec * sizeof(int)).ok());
    ASSERT_TRUE(RouteTokensCuda(gpu, dl->as<float>(), n, (*dids)->as<int>(), (*dw)->as<float>(), nullptr,
                                (*dcounts)->as<int>())
                    .ok());
    ASSERT_TRUE(CudaSynchronize(nullptr).ok());
    std::vector<int> got_ids(want_ids.size());
    std::vector<float> got_w(want_w.size());
    ASSERT_TRUE((*dids)->CopyTo(got_ids.data(), got_ids.size() * sizeof(int)).ok());
    ASSERT_TRUE((*dw)->CopyTo(got_w.data(), got_w.size() * sizeof(float)).ok());
    ASSERT_TRUE((*dcounts)->CopyTo(counts.data(), ec * sizeof(int)).ok());
    for (int id : got_ids) {
      if (id >= 0) --counts[id];
    }
    EXPECT_EQ(counts, std::vector<int>(ec, 5)) << "the routes counted are the routes written";
    int near_ties = 0;
    for (int t = 0; t < n; ++t) {
      const size_t o = static_cast<size_t>(t) * slots;
      if (!std::equal(got_ids.begin() + o, got_ids.begin() + o + slots, want_ids.begin() + o)) {
        ++near_ties;  // accepted only as a near-tie of the two logits involved
        for (int j = 0; j < slots; ++j) {
          if (got_ids[o + j] != want_ids[o + j] && got_ids[o + j] >= 0 && want_ids[o + j] >= 0) {
            EXPECT_NEAR(logits[static_cast<size_t>(t) * ec + got_ids[o + j]],
                        logits[static_cast<size_t>(t) * ec + want_ids[o + j]], 1e-5)
                << "token " << t << " slot " << j;
          }
        }
        continue;
      }
      for (int j = 0; j < slots; ++j) EXPECT_NEAR(got_w[o + j], want_w[o + j], 1e-5) << "token " << t;
    }
    EXPECT_LE(near_ties, 2) << ec << " experts";
  }
}

// The GPU's grouping of routes by expert is the host's, exactly: the same
// groups, the same rows in the same order with their weights, the same
// combine table; with empty slots, ids outside the layer, experts no token
// chose, and the largest batch one block takes.
TEST_F(CudaKernelsTest, ExpertGroupsMatchTheHost) {
  std::mt19937 rng(13);
  struct Shape {
    int tokens, slots, experts;
  };
  for (const Shape& shape : {Shape{1, 2, 8}, Shape{5, 8, 128}, Shape{33, 3, 8}, Shape{200, 9, 256},
                             Shape{kMaxDeviceGroupedRoutes / 8, 8, 64}, Shape{kMaxDeviceGroupedRoutes / 2, 2, 8},
                             Shape{kMaxDeviceGroupedRoutes, 1, kMaxGatingExperts}}) {
    const int tokens = shape.tokens, slots = shape.slots, num_experts = shape.experts;
    const size_t routes = static_cast<size_t>(tokens) * slots;
    std::vector<int> ids(routes);
    std::vector<float> weights(routes);
    for (int t = 0; t < tokens; ++t) {
      std::vector<int> order(num_experts);
      for (int e = 0; e < num_experts; ++e) order[e] = e;
      std::shuffle(order.begin(), order.end(), rng);
      for (int s = 0; s < slots; ++s) {
        const int r = static_cast<int>(rng() % 10);
        ids[static_cast<size_t>(t) * slots + s] = r == 0 ? -1 : r == 1 ? num_experts + s : order[s];
        weights[static_cast<size_t>(t) * slots + s] = static_cast<float>(rng() % 1000) / 1000.0f;
      }
    }
    // The host's layout.
    std::vector<int> host_ids = ids;
    for (int& id : host_ids) id = id >= num_experts ? -1 : id;
    std::vector<float> hidden(tokens);
    ExpertBatch batch{0, tokens, 1, hidden.data(), slots, host_ids.data(), weights.data()};
    ExpertWork work;
    ASSERT_TRUE(GroupByExpert(batch, num_experts, &work).ok());
    std::vector<int> want_offsets, want_index, want_gather;
    std::vector<float> want_weight;
    CombineTable(work, tokens, &want_offsets, &want_index);
    std::vector<int> want_first(num_experts, -1), want_rows(num_experts, 0);
    for (const ExpertWork::Group& g : work.groups) {
      want_first[g.expert] = static_cast<int>(want_gather.size());
      want_rows[g.expert] = static_cast<int>(g.rows.size());
      want_gather.insert(want_gather.end(), g.rows.begin(), g.rows.end());
      want_weight.insert(want_weight.end(), g.weights.begin(), g.weights.end());
    }
    // The device's.
    std::vector<ExpertFfnGroup> experts(num_experts);
    std::vector<uint16_t> fake(num_experts);
    for (int e = 0; e < num_experts; ++e) experts[e] = {&fake[e], &fake[e], &fake[e], -5, -5};
    auto d_experts = DeviceBuffer::Allocate(experts.size() * sizeof(ExpertFfnGroup));
    auto d_groups = DeviceBuffer::Allocate(experts.size() * sizeof(ExpertFfnGroup));
    auto d_ids = DeviceBuffer::Allocate(routes * sizeof(int));
    auto d_w = Upload(weights);
    auto d_gather = DeviceBuffer::Allocate(routes * sizeof(int));
    auto d_rw = DeviceBuffer::Allocate(routes * sizeof(float));
    auto d_offsets = DeviceBuffer::Allocate((tokens + 1) * sizeof(int));
    auto d_index = DeviceBuffer::Allocate(routes * sizeof(int));
    ASSERT_TRUE(d_experts.ok() && d_groups.ok() && d_ids.ok() && d_gather.ok() && d_rw.ok() && d_offsets.ok() &&
                d_index.ok());
    ASSERT_TRUE((*d_experts)->CopyFrom(experts.data(), experts.size() * sizeof(ExpertFfnGroup)).ok());
    ASSERT_TRUE((*d_ids)->CopyFrom(ids.data(), routes * sizeof(int)).ok());
    ASSERT_TRUE((*d_gather)->Fill(0x7f).ok());
    ASSERT_TRUE((*d_index)->Fill(0x7f).ok());
    DeviceExpertGroups out{(*d_groups)->as<ExpertFfnGroup>(), (*d_gather)->as<int>(), (*d_rw)->as<float>(),
                           (*d_offsets)->as<int>(), (*d_index)->as<int>()};
    ASSERT_TRUE(GroupExpertsCuda((*d_ids)->as<int>(), d_w->as<float>(), tokens, slots, num_experts,
                                 (*d_experts)->as<ExpertFfnGroup>(), out, nullptr)
                    .ok());
    ASSERT_TRUE(CudaSynchronize(nullptr).ok());
    std::vector<ExpertFfnGroup> groups(num_experts);
    std::vector<int> gather(routes), offsets(tokens + 1), index(routes);
    std::vector<float> row_weight(routes);
    ASSERT_TRUE((*d_groups)->CopyTo(groups.data(), groups.size() * sizeof(ExpertFfnGroup)).ok());
    ASSERT_TRUE((*d_gather)->CopyTo(gather.data(), routes * sizeof(int)).ok());
    ASSERT_TRUE((*d_rw)->CopyTo(row_weight.data(), routes * sizeof(float)).ok());
    ASSERT_TRUE((*d_offsets)->CopyTo(offsets.data(), offsets.size() * sizeof(int)).ok());
    ASSERT_TRUE((*d_index)->CopyTo(index.data(), routes * sizeof(int)).ok());
    const size_t rows = want_gather.size();
    int next = 0;
    for (int e = 0; e < num_experts; ++e) {
      EXPECT_EQ(groups[e].gate, &fake[e]);
      EXPECT_EQ(groups[e].num_rows, want_rows[e]) << "expert " << e;
      if (want_first[e] >= 0) {
        EXPECT_EQ(groups[e].row_offset, want_first[e]) << "expert " << e;
      }
      EXPECT_EQ(groups[e].row_offset, next) << "expert " << e;
      next += groups[e].num_rows;
    }
    EXPECT_EQ(std::vector<int>(gather.begin(), gather.begin() + rows), want_gather) << tokens << " tokens";
    EXPECT_EQ(std::vector<float>(row_weight.begin(), row_weight.begin() + rows), want_weight);
    EXPECT_EQ(std::vector<int>(gather.begin() + rows, gather.end()), std::vector<int>(routes - rows, 0));
    EXPECT_EQ(offsets, want_offsets);
    EXPECT_EQ(std::vector<int>(index.begin(), index.begin() + rows), want_index);
  }
  // More routes than one block groups.
  DeviceExpertGroups none;
  EXPECT_EQ(GroupExpertsCuda(nullptr, nullptr, kMaxDeviceGroupedRoutes + 1, 1, 8, nullptr, none, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

// Every scaling type (the host computes the frequencies with the CPU Rope),
// plain and interleaved, partial rotary dims, against Rope::Apply.
TEST_F(CudaKernelsTest, RopeMatchesCpuForEveryScaling) {
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<RopeParams> cases(7);
  cases[0].dim = 128;
  cases[1].kind = RopeKind::kLinear, cases[1].dim = 64, cases[1].factor = 4;
  cases[2].kind = RopeKind::kDynamic, cases[2].dim = 64, cases[2].factor = 2, cases[2].max_position_embeddings = 512;
  cases[3].kind = RopeKind::kYarn, cases[3].dim = 64, cases[3].factor = 40, cases[3].interleaved = true;
  cases[3].original_max_position_embeddings = 4096, cases[3].mscale = 1, cases[3].mscale_all_dim = 1;
  cases[3].max_position_embeddings = 163840;
  cases[4].kind = RopeKind::kLlama3, cases[4].dim = 128, cases[4].factor = 8, cases[4].theta = 500000;
  cases[4].original_max_position_embeddings = 8192, cases[4].max_position_embeddings = 131072;
  cases[5].dim = 34, cases[5].interleaved = true;  // a partial rotary dim, not a multiple of 16
  // Yarn with an attention factor (0.1 ln 4 + 1), as the qwen3_moe_yarn fixture.
  cases[6].kind = RopeKind::kYarn, cases[6].dim = 24, cases[6].factor = 4;
  cases[6].original_max_position_embeddings = 8, cases[6].max_position_embeddings = 32;
  for (const RopeParams& p : cases) {
    Rope rope(p);
    const int tokens = 37, heads = 5, head_stride = p.dim + 16, token_stride = heads * head_stride;
    std::vector<int> positions(tokens);
    for (int& v : positions) v = static_cast<int>(rng() % 3000);
    std::vector<float> inv = rope.InvFreq(3000);
    std::vector<float> x(static_cast<size_t>(tokens) * token_stride);
    for (float& v : x) v = normal(rng);
    std::vector<float> want = x, c(p.dim / 2), s(p.dim / 2);
    for (int t = 0; t < tokens; ++t) {
      rope.Angles(inv, positions[t], c.data(), s.data());
      rope.Apply(want.data() + static_cast<size_t>(t) * token_stride, heads, head_stride, c.data(), s.data());
    }
    auto dx = Upload(x), dinv = Upload(inv);
    auto dpos = DeviceBuffer::Allocate(positions.size() * sizeof(int));
    ASSERT_TRUE(dpos.ok());
    ASSERT_TRUE((*dpos)->CopyFrom(positions.data(), positions.size() * sizeof(int)).ok());
    ASSERT_TRUE(RopeCuda(dinv->as<float>(), rope.attention_scaling(), p.dim, p.interleaved, (*dpos)->as<int>(),
                         tokens, heads, token_stride, head_stride, dx->as<float>(), nullptr)
                    .ok());
    ASSERT_TRUE(CudaSynchronize(nullptr).ok());
    std::vector<float> got(x.size());
    ASSERT_TRUE(dx->CopyTo(got.data(), got.size() * sizeof(float)).ok());
    // Angles up to ~3000 rad: GPU and CPU sin/cos of the same float differ
    // in the last bits.
    EXPECT_LT(RelError(got, want), 1e-5) << "rope kind " << static_cast<int>(p.kind);
  }
}

// Paged causal attention: decode and prefill chunks, several sequences in
// one call, contexts long enough to be split, GQA, sliding windows, K and V
// sharing rows with different head sizes (latent attention), head sizes that
// are not multiples of 16 and rows that are not 16-byte aligned, against
// CausalAttention on the CPU; over fp32, bf16 and FP8 caches (the CPU given
// the values the cache holds: the kernels must add no error of their own
// beyond TF32's where they use it).
TEST_F(CudaKernelsTest, PagedAttentionMatchesCpu) {
  std::mt19937 rng(13);
  std::normal_distribution<float> normal(0.f, 1.f);
  struct Seq {
    int n, first_pos;
  };
  struct Case {
    const char* what;
    AttentionShape shape;
    std::vector<Seq> seqs;  // all in one call
    bool shared_rows;
    int pad;  // floats past each K row (V rows: pad / 2); odd: rows not 16-byte aligned
    // fp32 throughout; the tensor-core kernel (latent attention: 16 or more
    // heads over rows that hold V; calls with prompt chunks) multiplies in
    // TF32, 10-bit mantissas.
    double tolerance = 1e-5;
  };
  const std::vector<Case> cases = {
      {"GQA decode", {8, 2, 64, 64, 0.125f, 0}, {{1, 100}}, false, 8},
      {"a prefill chunk", {4, 4, 128, 128, 0.088f, 0}, {{20, 30}}, false, 16, 3e-3},
      {"sliding window, dim 40", {6, 3, 40, 40, 0.158f, 16}, {{5, 50}}, false, 8, 3e-3},
      {"latent: V is the first 64 of K's 80", {4, 1, 80, 64, 0.11f, 0}, {{3, 70}}, true, 8, 3e-3},
      {"a wide head", {2, 1, 512, 512, 0.044f, 0}, {{2, 300}}, false, 8},
      {"DeepSeek-V3's latent rows", {16, 1, 576, 512, 0.042f, 0}, {{2, 200}, {1, 900}}, true, 8, 3e-3},
      {"DeepSeek-V3's 128 heads, long and short", {128, 1, 576, 512, 0.042f, 0}, {{1, 3000}, {3, 20}}, true, 8,
       3e-3},
      {"latent, a partial head group, dims not multiples of 8", {20, 1, 76, 60, 0.11f, 0}, {{2, 100}}, true, 8, 3e-3},
      {"latent in a window", {32, 1, 96, 64, 0.1f, 40}, {{1, 500}, {4, 9}}, true, 8, 3e-3},
      {"between the instantiations", {2, 2, 200, 200, 0.07f, 0}, {{3, 40}}, false, 8, 3e-3},
      {"a batch: decodes and a prefill", {8, 2, 64, 64, 0.125f, 0}, {{1, 0}, {1, 4000}, {7, 9}, {1, 33}}, false, 8,
       3e-3},
      {"decodes alone, as sequences", {8, 2, 64, 64, 0.125f, 0}, {{1, 10}, {1, 4000}, {1, 33}}, false, 8},
      {"a long prompt chunk after a long history", {32, 8, 128, 128, 0.088f, 0}, {{70, 3000}}, false, 16, 3e-3},
      {"a long context, split", {32, 8, 128, 128, 0.088f, 0}, {{1, 6000}}, false, 8},
      {"a long context in a window", {4, 2, 128, 128, 0.088f, 100}, {{1, 3000}, {2, 50}}, false, 8, 3e-3},
      {"unaligned rows, odd dims", {6, 2, 38, 37, 0.16f, 0}, {{2, 130}, {1, 7}}, false, 3},
      {"more heads than a block takes", {40, 2, 64, 64, 0.125f, 0}, {{1, 77}, {3, 5}}, false, 8},
      // Prompts of several 64-row tiles and 64-key tiles, windows, small
      // heads: FlashAttention-2's kernel over a bf16 cache (V rows padded
      // by 8: whole 16-byte pieces).
      {"long prompts in a window", {8, 2, 64, 64, 0.125f, 100}, {{150, 0}, {90, 200}, {1, 60}}, false, 16, 3e-3},
      {"small heads", {4, 2, 16, 16, 0.25f, 0}, {{70, 5}, {1, 33}}, false, 16, 3e-3},
      {"heads of 32 in a window", {4, 1, 32, 32, 0.17f, 20}, {{65, 10}}, false, 16, 3e-3},
      // Decode rows over a bf16 cache of GQA rows: FlashDecodeCuda, split
      // or not, groups of 2 to 16 heads, windows, contexts shorter than a tile.
      {"decodes of many lengths", {32, 8, 128, 128, 0.088f, 0}, {{1, 6000}, {1, 17}, {1, 300}, {1, 0}}, false, 16,
       3e-3},
      {"decodes in a window, heads of 64", {16, 2, 64, 64, 0.125f, 100}, {{1, 3000}, {1, 50}, {1, 163}}, false, 16,
       3e-3},
      {"decodes, 16 heads a KV head", {16, 1, 128, 128, 0.088f, 0}, {{1, 200}}, false, 16, 3e-3},
      // A step of prompt chunks and decode rows: the chunks through
      // FlashAttention-2's kernel, the decode rows through FlashDecodeCuda.
      {"a step of decodes and prompt chunks", {32, 8, 128, 128, 0.088f, 0},
       {{1, 5000}, {100, 20}, {1, 40}, {1, 0}, {3, 7}}, false, 16, 3e-3},
      {"prompts of several 128-row tiles", {8, 2, 128, 128, 0.088f, 0}, {{300, 0}, {1, 20}, {129, 64}}, false, 16,
       3e-3},
  };
  int flash_calls = 0, decode_calls = 0;
  for (const Case& c : cases) {
   for (KvDType dtype : {KvDType::kF32, KvDType::kBf16, KvDType::kF8E4M3}) {
    SCOPED_TRACE(absl::StrCat(c.what, ", ", KvDTypeName(dtype), " cache"));
    const AttentionShape& sh = c.shape;
    const size_t elem = KvDTypeBytes(dtype);
    // FP8: scales apart, unless V is K's rows (one scale for the row).
    const bool fp8 = dtype == KvDType::kF8E4M3;
    const float k_scale = fp8 ? 1.f / 16 : 1.f, v_scale = fp8 && !c.shared_rows ? 1.f / 32 : k_scale;
    const int block_size = 16;
    const int k_stride = sh.num_kv_heads * sh.head_dim + c.pad, v_stride = sh.num_kv_heads * sh.v_head_dim + c.pad / 2;
    // One pool of blocks; each sequence owns a run of them, in reverse order
    // in memory, as a paged cache hands them out.
    int total_blocks = 0;
    std::vector<int> first_block;
    for (const Seq& q : c.seqs) {
      first_block.push_back(total_blocks);
      total_blocks += (q.first_pos + q.n + block_size - 1) / block_size;
    }
    std::vector<float> kdata(static_cast<size_t>(total_blocks) * block_size * k_stride);
    std::vector<float> vdata(static_cast<size_t>(total_blocks) * block_size * v_stride);
    for (float& v : kdata) v = normal(rng);
    for (float& v : vdata) v = normal(rng);
    // What the cache stores, and (in place) the values those bytes stand for.
    auto store = [&](std::vector<float>* values, float scale) {
      std::string bytes(values->size() * elem, '\0');
      for (size_t i = 0; i < values->size(); ++i) {
        float& x = (*values)[i];
        if (dtype == KvDType::kF32) std::memcpy(&bytes[i * 4], &x, 4);
        if (dtype == KvDType::kBf16) {
          const uint16_t h = F32ToBf16(x);
          std::memcpy(&bytes[i * 2], &h, 2);
          x = Bf16ToF32(h);
        }
        if (dtype == KvDType::kF8E4M3) {
          const uint8_t code = F32ToF8E4M3(x / scale);
          bytes[i] = static_cast<char>(code);
          x = F8E4M3ToF32(code) * scale;
        }
      }
      auto d = DeviceBuffer::Allocate(bytes.size());
      EXPECT_TRUE(d.ok() && (*d)->CopyFrom(bytes.data(), bytes.size()).ok());
      return std::move(*d);
    };
    auto dk = store(&kdata, k_scale), dv = store(&vdata, v_scale);
    std::vector<int> kb_index(total_blocks);  // page -> block of the pool
    std::vector<float> q, want;
    std::vector<int> positions, page_offsets;
    std::vector<RowSpan> sequences;
    int max_position = 0;
    for (size_t i = 0; i < c.seqs.size(); ++i) {
      const Seq& seq = c.seqs[i];
      const int blocks = (seq.first_pos + seq.n + block_size - 1) / block_size;
      std::vector<const float*> kb(blocks), vb(blocks);
      for (int b = 0; b < blocks; ++b) {
        const int block = first_block[i] + blocks - 1 - b;
        kb_index[first_block[i] + b] = block;
        kb[b] = kdata.data() + static_cast<size_t>(block) * block_size * k_stride;
        vb[b] = c.shared_rows ? kb[b] : vdata.data() + static_cast<size_t>(block) * block_size * v_stride;
      }
      KvPages host{kb.data(), vb.data(), block_size, k_stride, c.shared_rows ? k_stride : v_stride, 0, 0};
      std::vector<float> sq(static_cast<size_t>(seq.n) * sh.num_heads * sh.head_dim);
      for (float& v : sq) v = normal(rng);
      std::vector<float> out(static_cast<size_t>(seq.n) * sh.num_heads * sh.v_head_dim);
      CausalAttention(sh, sq.data(), seq.n, seq.first_pos, host, out.data(), nullptr);
      q.insert(q.end(), sq.begin(), sq.end());
      want.insert(want.end(), out.begin(), out.end());
      sequences.push_back({static_cast<int>(positions.size()), seq.n});
      for (int j = 0; j < seq.n; ++j) {
        positions.push_back(seq.first_pos + j);
        page_offsets.push_back(first_block[i]);
      }
      max_position = std::max(max_position, seq.first_pos + seq.n - 1);
    }
    std::vector<const void*> dkb(total_blocks), dvb(total_blocks);
    for (int p = 0; p < total_blocks; ++p) {
      dkb[p] = dk->as<char>() + static_cast<size_t>(kb_index[p]) * block_size * k_stride * elem;
      dvb[p] = c.shared_rows ? dkb[p] : dv->as<char>() + static_cast<size_t>(kb_index[p]) * block_size * v_stride * elem;
    }
    auto dkp = DeviceBuffer::Allocate(total_blocks * sizeof(void*));
    auto dvp = DeviceBuffer::Allocate(total_blocks * sizeof(void*));
    auto dpos = DeviceBuffer::Allocate(positions.size() * sizeof(int));
    auto dpo = DeviceBuffer::Allocate(page_offsets.size() * sizeof(int));
    ASSERT_TRUE(dkp.ok() && dvp.ok() && dpos.ok() && dpo.ok());
    ASSERT_TRUE((*dkp)->CopyFrom(dkb.data(), total_blocks * sizeof(void*)).ok());
    ASSERT_TRUE((*dvp)->CopyFrom(dvb.data(), total_blocks * sizeof(void*)).ok());
    ASSERT_TRUE((*dpos)->CopyFrom(positions.data(), positions.size() * sizeof(int)).ok());
    ASSERT_TRUE((*dpo)->CopyFrom(page_offsets.data(), page_offsets.size() * sizeof(int)).ok());
    PagedRows rows;
    rows.kv = CudaKvPages{(*dkp)->as<const void*>(), (*dvp)->as<const void*>(), block_size, k_stride,
                          c.shared_rows ? k_stride : v_stride, 0, 0, dtype, k_scale, v_scale};
    rows.positions = (*dpos)->as<int>();
    rows.page_offsets = (*dpo)->as<int>();
    rows.rows = static_cast<int>(positions.size());
    rows.max_position = max_position;
    auto dq = Upload(q);
    auto dout = DeviceBuffer::Allocate(want.size() * sizeof(float));
    ASSERT_TRUE(dout.ok());
    // FlashAttention-2's kernel rounds the queries and the probabilities
    // to bf16 for its products; it runs with 16 and with 32 rows a warp.
    bool chunks = false;
    for (const Seq& seq : c.seqs) chunks |= seq.n > 1;
    const bool flash = chunks && FlashPrefillFits(sh, rows, dq->as<float>());
    flash_calls += flash;
    const bool flash_decode = !chunks && FlashDecodeFits(sh, rows, dq->as<float>());
    decode_calls += flash_decode;
    for (int warp_rows : flash ? std::vector<int>{16, 32} : std::vector<int>{0}) {
      SCOPED_TRACE(absl::StrCat("rows a warp: ", warp_rows));
      ASSERT_TRUE((*dout)->Fill(0xff).ok());
      CudaPagedAttention attention;
      attention.set_flash_warp_rows(warp_rows);
      absl::Status st = attention.Run(sh, dq->as<float>(), rows, (*dout)->as<float>(), nullptr, sequences);
      ASSERT_TRUE(st.ok()) << st;
      ASSERT_TRUE(CudaSynchronize(nullptr).ok());
      std::vector<float> got(want.size());
      ASSERT_TRUE((*dout)->CopyTo(got.data(), got.size() * sizeof(float)).ok());
      EXPECT_LT(RelError(got, want), flash || flash_decode ? 1e-2 : c.tolerance)
          << (flash ? "(FlashAttention-2's kernel)" : flash_decode ? "(FlashDecodeCuda)" : "");
    }
   }
  }
  EXPECT_EQ(flash_calls, 7) << "the cases must reach FlashAttention-2's kernel";
  EXPECT_EQ(decode_calls, 3) << "the cases must reach FlashDecodeCuda";
}

// The GPU sampler against Sampler::Sample, given the same draws: greedy and
// sampled rows in one call, every filter and penalty, ties, vocabularies
// of many sizes. It must pick the CPU's token and penalise the same way.
TEST_F(CudaKernelsTest, SamplerMatchesCpu) {
  std::mt19937 rng(17);
  std::normal_distribution<float> normal(0.f, 2.f);
  auto params = [](float t, int k, float p, float min_p, float rep, float pres, float freq, uint64_t seed) {
    SamplingParams s;
    s.temperature = t;
    s.top_k = k;
    s.top_p = p;
    s.min_p = min_p;
    s.repetition_penalty = rep;
    s.presence_penalty = pres;
    s.frequency_penalty = freq;
    s.seed = seed;
    return s;
  };
  const std::vector<SamplingParams> kinds = {
      params(0, 0, 1, 0, 1, 0, 0, 1),           // greedy
      params(0, 0, 1, 0, 1.3f, 0.4f, 0.2f, 2),  // greedy with penalties
      params(1, 0, 1, 0, 1, 0, 0, 3),           // plain sampling
      params(0.7f, 50, 1, 0, 1, 0, 0, 4),       // top-k
      params(1.2f, 0, 0.9f, 0, 1, 0, 0, 5),     // top-p
      params(0.9f, 0, 1, 0.05f, 1, 0, 0, 6),    // min-p
      params(0.8f, 40, 0.8f, 0.02f, 1.2f, 0.3f, 0.1f, 7),  // everything
      params(2.0f, 1, 1, 0, 1, 0, 0, 8),        // top-k 1 is greedy
  };
  for (int vocab : {1, 7, 1000, 50257, 151936}) {
    for (bool ties : {false, true}) {
      SCOPED_TRACE(testing::Message() << "vocab " << vocab << (ties ? ", ties" : ""));
      // Rows of every kind, three draws each, in one call.
      const int rows = static_cast<int>(kinds.size()) * 3;
      std::vector<float> logits(static_cast<size_t>(rows) * vocab);
      for (float& v : logits) v = ties ? std::round(normal(rng)) : normal(rng);  // ties: few distinct values
      std::vector<int> want(rows);
      std::vector<float> want_logits = logits;
      std::vector<SampleRowParams> table;
      std::vector<PenaltyToken> penalties;
      for (int r = 0; r < rows; ++r) {
        SamplingParams sp = kinds[r % kinds.size()];
        sp.seed = *sp.seed + 100 * r;
        std::vector<int> prompt;
        for (int i = 0; i < 5; ++i) prompt.push_back(static_cast<int>(rng() % vocab));
        Sampler cpu(sp, prompt), twin(sp, prompt);
        for (int i = 0; i < 3; ++i) {  // some output so far
          const int t = static_cast<int>(rng() % vocab);
          cpu.Record(t);
          twin.Record(t);
        }
        want[r] = cpu.Sample(want_logits.data() + static_cast<size_t>(r) * vocab, vocab);
        SampleRowParams p;
        p.row = r;
        p.temperature = sp.temperature;
        p.top_k = sp.top_k;
        p.top_p = sp.top_p;
        p.min_p = sp.min_p;
        p.repetition_penalty = sp.repetition_penalty;
        p.presence_penalty = sp.presence_penalty;
        p.frequency_penalty = sp.frequency_penalty;
        p.uniform = twin.Draw();
        p.penalty_begin = static_cast<int>(penalties.size());
        for (const auto& [token, count] : twin.PenaltyTokens()) penalties.push_back({token, count});
        p.penalty_end = static_cast<int>(penalties.size());
        table.push_back(p);
      }
      auto d = Upload(logits);
      CudaSampler sampler;
      std::vector<int> got(rows, -1);
      absl::Status st = sampler.Run(d->as<float>(), rows, vocab, table, penalties, got.data(), nullptr);
      ASSERT_TRUE(st.ok()) << st;
      EXPECT_EQ(got, want);
      std::vector<float> penalised(logits.size());
      ASSERT_TRUE(d->CopyTo(penalised.data(), penalised.size() * sizeof(float)).ok());
      EXPECT_EQ(penalised, want_logits);
    }
  }
  // Bad rows and parameters are errors.
  auto d = Upload(std::vector<float>(10));
  CudaSampler sampler;
  int token = 0;
  SampleRowParams bad;
  bad.row = 2;  // of 1
  EXPECT_EQ(sampler.Run(d->as<float>(), 1, 10, {bad}, {}, &token, nullptr).code(), absl::StatusCode::kInvalidArgument);
  bad.row = 0;
  bad.top_p = 0;
  EXPECT_EQ(sampler.Run(d->as<float>(), 1, 10, {bad}, {}, &token, nullptr).code(), absl::StatusCode::kInvalidArgument);
  bad.top_p = 1;
  bad.penalty_end = 3;  // of none
  EXPECT_EQ(sampler.Run(d->as<float>(), 1, 10, {bad}, {}, &token, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

TEST(CudaRuntimeTest, BadArgumentsAreErrorsNotCrashes) {
  AttentionShape bad{6, 4, 64, 64, 1.f, 0};  // 4 does not divide 6
  PagedRows rows;
  rows.kv = CudaKvPages{nullptr, nullptr, 16, 64, 64, 0, 0};
  rows.rows = 1;
  CudaPagedAttention attention;
  EXPECT_EQ(attention.Run(bad, nullptr, rows, nullptr, nullptr).code(), absl::StatusCode::kInvalidArgument);
  rows.kv.block_size = 0;
  EXPECT_EQ(attention.Run(AttentionShape{8, 4, 64, 64, 1.f, 0}, nullptr, rows, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  rows.kv.block_size = 16;
  rows.rows = 3;
  const RowSpan gap[] = {{0, 1}, {2, 1}};  // row 1 in no sequence
  EXPECT_EQ(attention.Run(AttentionShape{8, 4, 64, 64, 1.f, 0}, nullptr, rows, nullptr, nullptr, gap).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RopeCuda(nullptr, 1.f, 33, false, nullptr, 1, 1, 33, 33, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  GatingParams too_many;
  too_many.num_experts = 1000;
  too_many.top_k = 2;
  EXPECT_EQ(RouteTokensCuda(too_many, nullptr, 1, nullptr, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CudaExpertFfn::Create(0, 8).status().code(), absl::StatusCode::kInvalidArgument);
  auto ffn = CudaExpertFfn::Create(8, 8);
  ASSERT_TRUE(ffn.ok());
  ExpertFfnGroup no_weights;
  no_weights.num_rows = 2;
  EXPECT_EQ((*ffn)->Run(nullptr, nullptr, {no_weights}, nullptr, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE((*ffn)->Run(nullptr, nullptr, {ExpertFfnGroup{}}, nullptr, nullptr).ok());  // nothing to do
  static const uint16_t fake = 0;  // never read: the check comes first
  std::vector<ExpertFfnGroup> too_many_groups(65536, ExpertFfnGroup{&fake, &fake, &fake, 0, 1});
  EXPECT_EQ((*ffn)->Run(nullptr, nullptr, too_many_groups, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  // The grouped GEMM: sizes TMA cannot stride over (or no Hopper GPU) are
  // refused, and CudaExpertFfn then uses cuBLAS; misaligned weights are an
  // error before anything is launched.
  EXPECT_FALSE(CudaGroupedGemm::Supported(100, 64));
  EXPECT_EQ(CudaGroupedGemm::Create(100, 64).status().code(), absl::StatusCode::kFailedPrecondition);
  if (CudaComputeCapability() == 90) {
    auto gg = CudaGroupedGemm::Create(64, 64);
    ASSERT_TRUE(gg.ok()) << gg.status();
    auto weights = DeviceBuffer::Allocate(64 * 64 * 2 + 16);
    ASSERT_TRUE(weights.ok());
    const uint16_t* odd = (*weights)->as<uint16_t>() + 1;
    EXPECT_EQ((*gg)->Run(nullptr, nullptr, {ExpertFfnGroup{odd, odd, odd, 0, 8}}, nullptr, nullptr, nullptr).code(),
              absl::StatusCode::kInvalidArgument);
  }
  // Argument checks come before any CUDA call, so they hold without a GPU.
  EXPECT_EQ(RmsNormCuda(nullptr, nullptr, 1, 0, 1e-6f, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(RmsNormCuda(nullptr, nullptr, 0, 8, 1e-6f, nullptr, nullptr).ok());
  EXPECT_GE(CudaDeviceCount(), 0);
}

}  // namespace
}  // namespace moemesh
