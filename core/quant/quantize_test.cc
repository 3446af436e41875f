#include "core/quant/quantize.h"

#include <cmath>
#include <initializer_list>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/kernels/cpu/linear.h"
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

std::vector<QuantSpec> Specs() {
  std::vector<QuantSpec> specs;
  for (const char* s : {"int8", "int4:32", "int4:64", "int4:128", "int4:32:asym", "int4:64:asym", "int4:128:asym"}) {
    specs.push_back(*ParseQuantSpec(s));
  }
  return specs;
}

// Each of x's `rows` rows ([rows, k]) through Linear alone.
std::vector<float> EachRowAlone(const std::vector<float>& x, int rows, const MatrixView& w, const float* bias,
                                LinearIsa isa) {
  const int k = w.cols, n = w.rows;
  std::vector<float> alone(static_cast<size_t>(rows) * n);
  for (int i = 0; i < rows; ++i) {
    Linear(x.data() + static_cast<size_t>(i) * k, 1, w, bias, alone.data() + static_cast<size_t>(i) * n, nullptr,
           isa);
  }
  return alone;
}

// x's first m rows in one call, for each m of `batches`, give the bits
// each row gives alone.
void ExpectBatchIndependent(const std::vector<float>& x, const MatrixView& w, const float* bias,
                            const std::vector<float>& alone, std::initializer_list<int> batches, ThreadPool* pool,
                            LinearIsa isa, const std::string& what) {
  for (int m : batches) {
    std::vector<float> y(static_cast<size_t>(m) * w.rows);
    Linear(x.data(), m, w, bias, y.data(), pool, isa);
    for (size_t j = 0; j < y.size(); ++j) {
      ASSERT_EQ(y[j], alone[j]) << what << " isa " << static_cast<int>(isa) << " m=" << m << " at " << j;
    }
  }
}

TEST(QuantSpecTest, ParsesWhatItNamesAndRefusesTheRest) {
  for (const char* s : {"none", "int8", "int4:128", "int4:32", "int4:64:asym", "int4:128:q8", "int4:32:asym:q8"}) {
    auto spec = ParseQuantSpec(s);
    ASSERT_TRUE(spec.ok()) << s << ": " << spec.status();
    EXPECT_EQ(QuantSpecName(*spec), s);
  }
  EXPECT_EQ(QuantSpecName(*ParseQuantSpec("int4")), "int4:128");
  EXPECT_EQ(QuantSpecName(*ParseQuantSpec("int4:64:sym")), "int4:64");
  EXPECT_EQ(QuantSpecName(*ParseQuantSpec("")), "none");
  EXPECT_EQ(QuantSpecName(*ParseQuantSpec("int4:q8")), "int4:128:q8");
  EXPECT_TRUE(ParseQuantSpec("int4:64:q8")->int8_inputs);
  EXPECT_FALSE(ParseQuantSpec("int4:64")->int8_inputs);
  for (const char* s : {"int3", "int4:48", "int4:16", "int8:32", "int4:64:zero", "fp8", "int4:x", "none:1", "int8:q8",
                        "q8", "int4:q8:asym", "int4:64:asym:q8:q8"}) {
    auto spec = ParseQuantSpec(s);
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument) << s;
    if (!spec.ok()) {
      EXPECT_NE(spec.status().message().find("int4:G:asym"), absl::string_view::npos);
    }
  }
}

// Every weight comes back within half a step of its group (a step is the
// scale), the groups' zero points (-bias / scale) are integers in range,
// and a row of zeros stays zeros.
TEST(QuantizeTest, RoundTripsWithinHalfAStep) {
  for (const QuantSpec& spec : Specs()) {
    for (auto [rows, cols] : {std::pair{3, 13}, {5, 48}, {2, 257}, {4, 320}}) {
      std::vector<float> w = Random(static_cast<size_t>(rows) * cols, 11);
      std::fill(w.begin(), w.begin() + cols, 0.f);  // row 0: zeros
      if (!spec.symmetric) {
        for (int c = 0; c < cols; ++c) w[cols + c] = std::fabs(w[cols + c]) + 1;  // row 1: all positive
      }
      auto q = Quantize(MatrixView{DType::kF32, rows, cols, w.data()}, spec);
      ASSERT_TRUE(q.ok()) << q.status();
      const MatrixView& v = (*q)->view();
      EXPECT_EQ(v.quant, spec.kind);
      std::vector<float> back(cols);
      for (int r = 0; r < rows; ++r) {
        GatherRow(v, r, back.data());
        for (int c = 0; c < cols; ++c) {
          const int g = c / v.group;
          const float scale = v.scales[r * v.groups() + g];
          const float zero = scale > 0 ? -v.biases[r * v.groups() + g] / scale : 0;
          EXPECT_NEAR(zero, std::nearbyint(zero), 1e-4);
          EXPECT_GE(zero, 0);
          EXPECT_LE(zero, 15);
          if (r == 0) {
            ASSERT_EQ(back[c], 0.f) << QuantSpecName(spec);
            continue;
          }
          ASSERT_LE(std::fabs(back[c] - w[r * cols + c]), 0.5f * scale * (1 + 1e-5f) + 1e-7f)
              << QuantSpecName(spec) << " " << rows << "x" << cols << " at " << r << "," << c;
        }
      }
    }
  }
}

TEST(QuantizeTest, ExtremeAndBadWeights) {
  // Weights near float's range keep finite scales and come back close,
  // but for symmetric int4, whose zero point would overflow: refused.
  std::vector<float> big = {3e38f, -3e38f, 1e-30f, 0.f, 2e38f, -1e38f, 5.f, 7.f};
  for (const QuantSpec& spec : Specs()) {
    auto q = Quantize(MatrixView{DType::kF32, 1, 8, big.data()}, spec);
    if (spec.kind == QuantKind::kInt4 && spec.symmetric) {
      EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument) << QuantSpecName(spec);
      EXPECT_NE(q.status().message().find(":asym or int8"), absl::string_view::npos) << q.status();
      continue;
    }
    ASSERT_TRUE(q.ok()) << q.status();
    std::vector<float> back(8);
    GatherRow((*q)->view(), 0, back.data());
    EXPECT_TRUE(std::isfinite((*q)->view().scales[0]));
    EXPECT_NEAR(back[0] / 3e38f, 1.0f, 0.15f) << QuantSpecName(spec);
  }
  std::vector<float> nan = {1.f, std::numeric_limits<float>::quiet_NaN()}, inf = {std::numeric_limits<float>::infinity(), 0};
  for (auto* w : {&nan, &inf}) {
    auto q = Quantize(MatrixView{DType::kF32, 1, 2, w->data()}, *ParseQuantSpec("int8"));
    EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
  }
  std::vector<int8_t> codes(4);
  EXPECT_EQ(Quantize(MatrixView{DType::kI8, 2, 2, codes.data()}, *ParseQuantSpec("int8")).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Linear with quantized weights against a double-precision product with the
// weights as GatherRow gives them, for every kernel variant, odd sizes
// (scalar tails, partial groups and blocks) and batch widths; and every
// batch width gives each row exactly what it gives alone.
TEST(QuantizedLinearTest, MatchesTheDequantizedProductAndDoesNotDependOnTheBatch) {
  ThreadPool pool(2);
  for (const QuantSpec& spec : Specs()) {
    for (auto [n, k] : {std::pair{7, 13}, {33, 48}, {17, 257}, {20, 320}}) {
      std::vector<float> wf = Random(static_cast<size_t>(n) * k, 21), bias = Random(n, 22);
      auto q = Quantize(MatrixView{DType::kF32, n, k, wf.data()}, spec);
      ASSERT_TRUE(q.ok()) << q.status();
      const MatrixView& w = (*q)->view();
      std::vector<float> wr(static_cast<size_t>(n) * k);
      for (int r = 0; r < n; ++r) GatherRow(w, r, wr.data() + static_cast<size_t>(r) * k);
      const int max_m = 11;
      std::vector<float> x = Random(static_cast<size_t>(max_m) * k, 23);
      for (int v = 0; v <= static_cast<int>(BestLinearIsa()); ++v) {
        const LinearIsa isa = static_cast<LinearIsa>(v);
        const std::vector<float> alone = EachRowAlone(x, max_m, w, bias.data(), isa);
        for (int i = 0; i < max_m; ++i) {
          for (int j = 0; j < n; ++j) {
            double ref = bias[j];
            for (int d = 0; d < k; ++d) ref += static_cast<double>(x[i * k + d]) * wr[j * k + d];
            ASSERT_NEAR(alone[i * n + j], ref, 1e-4 * (1 + std::fabs(ref)))
                << QuantSpecName(spec) << " n=" << n << " k=" << k << " isa " << v;
          }
        }
        ExpectBatchIndependent(x, w, bias.data(), alone, {2, 3, 4, 5, 9, 11}, &pool, isa,
                               absl::StrCat(QuantSpecName(spec), " n=", n, " k=", k));
      }
    }
  }
}

// Int4 weights by int8 inputs ("int4:G:q8", MatrixView::int8_inputs):
// within the inputs' rounding of the dequantized product (each input off by
// at most its block's largest / 254, against code * scale), the same bits
// whatever the batch and whatever the kernels (portable, AVX2, AVX-512 with
// VNNI where the CPU has it), with odd sizes (a last block in part, a last
// chunk of fewer than four blocks), a row of zero inputs, a block too small
// to scale and one of huge inputs.
TEST(QuantizedLinearTest, Int8InputsStayWithinTheirRoundingAndDependNeitherOnBatchNorOnKernels) {
  ThreadPool pool(2);
  for (const char* name : {"int4:32:q8", "int4:64:q8", "int4:128:q8", "int4:32:asym:q8", "int4:128:asym:q8"}) {
    const QuantSpec spec = *ParseQuantSpec(name);
    for (auto [n, k] : {std::pair{7, 13}, {33, 48}, {17, 257}, {20, 320}, {9, 1024}, {5, 416}}) {
      std::vector<float> wf = Random(static_cast<size_t>(n) * k, 31), bias = Random(n, 32);
      auto q = Quantize(MatrixView{DType::kF32, n, k, wf.data()}, spec);
      ASSERT_TRUE(q.ok()) << q.status();
      const MatrixView& w = (*q)->view();
      ASSERT_TRUE(w.int8_inputs);
      std::vector<float> wr(static_cast<size_t>(n) * k);
      for (int r = 0; r < n; ++r) GatherRow(w, r, wr.data() + static_cast<size_t>(r) * k);
      const int max_m = 6;
      std::vector<float> x = Random(static_cast<size_t>(max_m) * k, 33, 2.0f);
      for (int d = 0; d < k; ++d) x[static_cast<size_t>(2) * k + d] = 0.0f;  // row 2: zeros
      // Row 3: a first block of inputs too small to scale (they count as
      // zeros), row 4: one of very large inputs.
      for (int d = 0; d < std::min(k, 32); ++d) x[static_cast<size_t>(3) * k + d] = 1e-38f * (d % 3 - 1);
      for (int d = 0; d < std::min(k, 32); ++d) x[static_cast<size_t>(4) * k + d] *= 1e6f;
      std::vector<float> first;
      for (int v = 0; v <= static_cast<int>(BestLinearIsa()); ++v) {
        const LinearIsa isa = static_cast<LinearIsa>(v);
        const std::vector<float> alone = EachRowAlone(x, max_m, w, bias.data(), isa);
        for (int i = 0; i < max_m; ++i) {
          for (int j = 0; j < n; ++j) {
            double ref = bias[j], bound = 0;
            for (int b = 0; b * 32 < k; ++b) {
              double amax = 0, wsum = 0;
              // The inputs' rounding meets code * scale (the weight less its
              // group's bias: the bias terms take the exact inputs).
              for (int d = 32 * b; d < std::min(k, 32 * b + 32); ++d) {
                amax = std::max(amax, std::fabs(static_cast<double>(x[i * k + d])));
                wsum += std::fabs(wr[j * k + d] - w.biases[static_cast<size_t>(j) * w.groups() + d / w.group]);
              }
              bound += amax / 254 * wsum;
            }
            double terms = std::fabs(bias[j]);  // fp32 sums err with the terms' size, not the result's
            for (int d = 0; d < k; ++d) {
              ref += static_cast<double>(x[i * k + d]) * wr[j * k + d];
              terms += std::fabs(static_cast<double>(x[i * k + d]) * wr[j * k + d]);
            }
            ASSERT_NEAR(alone[i * n + j], ref, bound + 1e-5 * terms + 1e-4)
                << name << " n=" << n << " k=" << k << " isa " << v << " row " << i;
            if (i == 2) {
              ASSERT_EQ(alone[i * n + j], bias[j]);
            }
          }
        }
        if (first.empty()) first = alone;
        ASSERT_EQ(alone, first) << name << " n=" << n << " k=" << k << ": isa " << v;
        ExpectBatchIndependent(x, w, bias.data(), alone, {2, 5, 6}, &pool, isa,
                               absl::StrCat(name, " n=", n, " k=", k));
      }
    }
  }
}

// Int4 matrices packed as GPTQ (v1, v2) and AWQ store them read back as
// the same codes, zero points and (F16-rounded) scales: the same weights.
TEST(PackedInt4Test, PackedAndReadBackGiveTheSameWeights) {
  const int rows = 24, cols = 256;
  std::vector<float> w = Random(static_cast<size_t>(rows) * cols, 31, 0.05f);
  for (const char* spec : {"int4:32", "int4:128", "int4:64:asym"}) {
    auto q = Quantize(MatrixView{DType::kF32, rows, cols, w.data()}, *ParseQuantSpec(spec));
    ASSERT_TRUE(q.ok());
    for (auto [layout, v2] : {std::pair{PackedInt4::Layout::kGptq, false}, {PackedInt4::Layout::kGptq, true},
                              {PackedInt4::Layout::kAwq, false}}) {
      auto t = PackInt4((*q)->view(), layout, v2);
      ASSERT_TRUE(t.ok()) << spec << ": " << t.status();
      PackedInt4 p;
      p.layout = layout;
      p.rows = rows;
      p.cols = cols;
      p.group = (*q)->view().group;
      p.gptq_v2 = v2;
      p.qweight = t->qweight.data();
      p.qzeros = t->qzeros.data();
      p.scales = t->scales.data();
      p.scales_dtype = DType::kF16;
      auto back = FromPackedInt4(p);
      ASSERT_TRUE(back.ok()) << back.status();
      std::vector<float> a(cols), b(cols);
      for (int r = 0; r < rows; ++r) {
        GatherRow((*q)->view(), r, a.data());
        GatherRow((*back)->view(), r, b.data());
        const float scale = (*q)->view().scales[static_cast<size_t>(r) * (*q)->view().groups()];
        for (int c = 0; c < cols; ++c) {
          // F16 scales: within F16's rounding of 15 steps.
          ASSERT_NEAR(a[c], b[c], 15 * scale * 1e-3f) << spec << " row " << r << " col " << c;
        }
      }
    }
  }
  // v1 cannot store a zero point of 0 (an all-positive asymmetric group).
  std::vector<float> positive(static_cast<size_t>(8) * 32, 1.0f);
  positive[5] = 2.0f;
  auto q = Quantize(MatrixView{DType::kF32, 8, 32, positive.data()}, *ParseQuantSpec("int4:32:asym"));
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(PackInt4((*q)->view(), PackedInt4::Layout::kGptq, false).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(PackInt4((*q)->view(), PackedInt4::Layout::kGptq, true).ok());
  EXPECT_TRUE(PackInt4((*q)->view(), PackedInt4::Layout::kAwq, false).ok());
}

// Block-scaled FP8 (DeepSeek-V3's checkpoints): Linear against the
// dequantized product for every kernel variant, partial blocks and odd
// sizes included, and every batch width giving each row exactly what it
// gives alone; the weights are each byte's E4M3 value times its block's scale.
TEST(Fp8BlocksTest, LinearMatchesTheDequantizedProductAndDoesNotDependOnTheBatch) {
  ThreadPool pool(2);
  for (auto [n, k, block] : {std::tuple{7, 13, 16}, {33, 200, 128}, {130, 257, 64}}) {
    std::mt19937 g(41);
    std::vector<uint8_t> codes(static_cast<size_t>(n) * k);
    for (uint8_t& c : codes) {
      c = static_cast<uint8_t>(g() & 0xFF);
      if ((c & 0x7F) == 0x7F) c &= 0xF0;  // no NaN
    }
    const int block_rows = 16, grid_rows = (n + block_rows - 1) / block_rows, grid_cols = (k + block - 1) / block;
    std::vector<float> scales = Random(static_cast<size_t>(grid_rows) * grid_cols, 42, 0.01f);
    auto q = FromFp8Blocks(n, k, block_rows, block, codes.data(), scales.data(), DType::kF32);
    ASSERT_TRUE(q.ok()) << q.status();
    const MatrixView& w = (*q)->view();
    std::vector<float> row(k);
    for (int r = 0; r < n; ++r) {
      GatherRow(w, r, row.data());
      for (int c = 0; c < k; ++c) {
        ASSERT_EQ(row[c], F8E4M3ToF32(codes[static_cast<size_t>(r) * k + c]) *
                              scales[static_cast<size_t>(r / block_rows) * grid_cols + c / block]);
      }
    }
    const int max_m = 9;
    std::vector<float> x = Random(static_cast<size_t>(max_m) * k, 43);
    for (int v = 0; v <= static_cast<int>(BestLinearIsa()); ++v) {
      const LinearIsa isa = static_cast<LinearIsa>(v);
      const std::vector<float> alone = EachRowAlone(x, max_m, w, nullptr, isa);
      for (int i = 0; i < max_m; ++i) {
        for (int j = 0; j < n; ++j) {
          GatherRow(w, j, row.data());
          double ref = 0;
          for (int d = 0; d < k; ++d) ref += static_cast<double>(x[i * k + d]) * row[d];
          ASSERT_NEAR(alone[i * n + j], ref, 1e-4 * (1 + std::fabs(ref))) << "n=" << n << " k=" << k << " isa " << v;
        }
      }
      ExpectBatchIndependent(x, w, nullptr, alone, {2, 5, 9}, &pool, isa, absl::StrCat("fp8 n=", n, " k=", k));
    }
  }
  std::vector<uint8_t> codes(64);
  std::vector<float> bad = {NAN};
  EXPECT_EQ(FromFp8Blocks(2, 32, 128, 128, codes.data(), bad.data(), DType::kF32).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FromFp8Blocks(2, 32, 128, 48, codes.data(), bad.data(), DType::kF32).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ToFp8Blocks, FromFp8Blocks' inverse: each block's scale its largest
// magnitude / 448 (that weight's code the largest, 448), every weight within
// half an E4M3 step of its block's scale times its code (3-bit mantissas:
// 1/16 of its magnitude, or of the subnormal step), blocks of zeros zero;
// read back by FromFp8Blocks to those values; bad input refused.
TEST(Fp8BlocksTest, WrittenBlocksReadBackWithinHalfAStep) {
  for (auto [n, k, block_rows, block_cols] : {std::tuple{7, 13, 4, 16}, {130, 257, 128, 128}, {64, 64, 16, 32}}) {
    std::vector<float> w = Random(static_cast<size_t>(n) * k, 51, 2.0f);
    for (int c = 0; c < std::min(k, block_cols); ++c) {  // the first block of the first rows: zeros
      for (int r = 0; r < std::min(n, block_rows); ++r) w[static_cast<size_t>(r) * k + c] = 0.f;
    }
    auto t = ToFp8Blocks(MatrixView{DType::kF32, n, k, w.data()}, block_rows, block_cols);
    ASSERT_TRUE(t.ok()) << t.status();
    const int grid_cols = (k + block_cols - 1) / block_cols;
    ASSERT_EQ(t->scales.size(), static_cast<size_t>((n + block_rows - 1) / block_rows) * grid_cols);
    EXPECT_EQ(t->scales[0], 0.f);
    auto q = FromFp8Blocks(n, k, block_rows, block_cols, t->codes.data(), t->scales.data(), DType::kF32);
    ASSERT_TRUE(q.ok()) << q.status();
    std::vector<float> row(k), amax(t->scales.size(), 0.f);
    for (int r = 0; r < n; ++r) {
      for (int c = 0; c < k; ++c) {
        float& a = amax[static_cast<size_t>(r / block_rows) * grid_cols + c / block_cols];
        a = std::max(a, std::fabs(w[static_cast<size_t>(r) * k + c]));
      }
    }
    for (size_t b = 0; b < amax.size(); ++b) EXPECT_EQ(t->scales[b], amax[b] / 448.0f) << "block " << b;
    for (int r = 0; r < n; ++r) {
      GatherRow((*q)->view(), r, row.data());
      for (int c = 0; c < k; ++c) {
        const float x = w[static_cast<size_t>(r) * k + c];
        const float s = t->scales[static_cast<size_t>(r / block_rows) * grid_cols + c / block_cols];
        const uint8_t code = t->codes[static_cast<size_t>(r) * k + c];
        ASSERT_EQ(row[c], F8E4M3ToF32(code) * s);
        // Half a step of E4M3 at x / s: 2^(exponent - 4), subnormals 2^-10.
        const float scaled = std::fabs(x) / (s > 0 ? s : 1.f);
        const float half_step = scaled < std::ldexp(1.f, -6) ? std::ldexp(1.f, -10)
                                                             : std::ldexp(1.f, std::ilogb(scaled) - 4);
        ASSERT_LE(std::fabs(row[c] - x), half_step * s * 1.0001f + 1e-12f) << r << "," << c << " x=" << x;
      }
    }
  }
  std::vector<float> bad = {1.f, NAN};
  EXPECT_EQ(ToFp8Blocks(MatrixView{DType::kF32, 1, 2, bad.data()}, 1, 16).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<float> ok = {1.f, 2.f};
  EXPECT_EQ(ToFp8Blocks(MatrixView{DType::kF32, 1, 2, ok.data()}, 1, 48).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moemesh
