// BF16 weights by bf16 inputs (MatrixView::bf16_inputs): every kernel this
// CPU runs against a double-precision product of the rounded inputs, the
// same bits for a row whatever its batch, and what reaches the kernels is
// the inputs rounded to bf16, nothing coarser.
#include "core/kernels/cpu/bf16_inputs.h"

#include <cmath>
#include <random>
#include <tuple>
#include <vector>

#include "core/tensor/dtype.h"
#include "core/tensor/thread_pool.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0, 1);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

struct Case {
  int m, n, k;
  std::vector<float> x, bias;
  std::vector<uint16_t> w;
  MatrixView view() const {
    MatrixView v{DType::kBF16, n, k, w.data()};
    v.bf16_inputs = true;
    return v;
  }
};

Case MakeCase(int m, int n, int k) {
  Case c{m, n, k, Random(static_cast<size_t>(m) * k, 1), Random(n, 3), {}};
  for (float f : Random(static_cast<size_t>(n) * k, 2)) c.w.push_back(F32ToBf16(f));
  return c;
}

// Shapes around the 32-column chunks, the four accumulator streams, the
// decode/prefill split (4 rows) and the prefill blocks (4 x 4 of 16-row
// panels).
const std::vector<std::tuple<int, int, int>> kShapes = {
    {1, 7, 13}, {2, 5, 32}, {3, 33, 64}, {4, 9, 127}, {5, 17, 128}, {17, 130, 257}, {6, 1, 1}, {9, 19, 1111}};

std::vector<LinearIsa> Isas() {
  std::vector<LinearIsa> out;
  for (int v = 0; v <= static_cast<int>(BestLinearIsa()); ++v) out.push_back(static_cast<LinearIsa>(v));
  return out;
}

TEST(Bf16InputsTest, MatchesTheRoundedProductForEveryKernel) {
  ThreadPool pool(2);
  for (LinearIsa isa : Isas()) {
    for (auto [m, n, k] : kShapes) {
      const Case c = MakeCase(m, n, k);
      for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
        std::vector<float> y(static_cast<size_t>(m) * n, NAN);
        Linear(c.x.data(), m, c.view(), c.bias.data(), y.data(), p, isa);
        for (int i = 0; i < m; ++i) {
          for (int j = 0; j < n; ++j) {
            double ref = c.bias[j], magnitude = std::fabs(c.bias[j]);
            for (int d = 0; d < k; ++d) {
              const double product = static_cast<double>(Bf16ToF32(F32ToBf16(c.x[i * k + d]))) *
                                     Bf16ToF32(c.w[static_cast<size_t>(j) * k + d]);
              ref += product;
              magnitude += std::fabs(product);
            }
            // fp32 sums of k exact products: within k ulps of their magnitude.
            ASSERT_NEAR(y[i * n + j], ref, (k + 2) * 0x1p-24 * magnitude)
                << "m=" << m << " n=" << n << " k=" << k << " isa " << static_cast<int>(isa);
          }
        }
      }
    }
  }
}

// A row's result has the same bits alone, in a decode batch and in a
// prefill batch, on every kernel.
TEST(Bf16InputsTest, ARowsResultDoesNotDependOnItsBatch) {
  for (LinearIsa isa : Isas()) {
    for (int k : {13, 96, 257, 1111}) {
      const int m = 11, n = 21;
      const Case c = MakeCase(m, n, k);
      std::vector<float> all(static_cast<size_t>(m) * n), few(3 * static_cast<size_t>(n)), one(n);
      Linear(c.x.data(), m, c.view(), nullptr, all.data(), nullptr, isa);
      Linear(c.x.data(), 3, c.view(), nullptr, few.data(), nullptr, isa);
      for (int i = 0; i < m; ++i) {
        Linear(c.x.data() + static_cast<size_t>(i) * k, 1, c.view(), nullptr, one.data(), nullptr, isa);
        for (int j = 0; j < n; ++j) {
          ASSERT_EQ(one[j], all[static_cast<size_t>(i) * n + j]) << "row " << i << " k=" << k;
          if (i < 3) {
            ASSERT_EQ(one[j], few[static_cast<size_t>(i) * n + j]) << "row " << i << " k=" << k;
          }
        }
      }
    }
  }
}

// The inputs are rounded to bf16 and no further: inputs that are bf16
// already give what the fp32 kernels give on them (up to summation order),
// and an input that bf16 cannot hold moves the result by its rounding.
TEST(Bf16InputsTest, RoundsTheInputsToBf16) {
  const int m = 1, n = 1, k = 1;
  Case c = MakeCase(m, n, k);
  c.w = {F32ToBf16(1.0f)};
  c.bias = {0.0f};
  for (LinearIsa isa : Isas()) {
    for (float x : {1.0f + 0x1p-8f, 1.0f + 0x1p-7f, 3.0f + 0x1p-6f, -0x1p-100f * 1.00390625f}) {
      float y = NAN;
      Linear(&x, 1, c.view(), nullptr, &y, nullptr, isa);
      EXPECT_EQ(y, Bf16ToF32(F32ToBf16(x))) << x << " isa " << static_cast<int>(isa);
    }
    // NaN and infinities go through.
    float nan = NAN, inf = INFINITY, y = 0;
    Linear(&nan, 1, c.view(), nullptr, &y, nullptr, isa);
    EXPECT_TRUE(std::isnan(y));
    Linear(&inf, 1, c.view(), nullptr, &y, nullptr, isa);
    EXPECT_EQ(y, INFINITY);
  }
}

TEST(Bf16InputsTest, SaysWhetherTheCpuHasAvx512Bf16) {
  // Not an assertion on this machine's CPU: the figure that depends on it
  // (docs/PERFORMANCE.md) names the CPU.
  std::printf("AVX-512 BF16: %s\n", HasAvx512Bf16() ? "yes" : "no");
}

}  // namespace
}  // namespace moemesh
