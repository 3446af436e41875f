// CUDA kernels against the CPU kernels on random inputs of many shapes
// (DESIGN.md: every CUDA kernel is tested against its CPU kernel). Labelled
// `gpu`; skips where no GPU is present. Run on the GPU machine with
// tools/gpu/run.sh.
#include <cmath>
#include <random>
#include <vector>

#include "core/kernels/cpu/norm.h"
#include "core/kernels/cuda/cuda_runtime_util.h"
#include "core/kernels/cuda/norm.h"
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

// ||a - b|| / ||b||, NaN-safe: NaN anywhere fails.
double RelError(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
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

TEST(CudaRuntimeTest, BadArgumentsAreErrorsNotCrashes) {
  // Argument checks come before any CUDA call, so they hold without a GPU.
  EXPECT_EQ(RmsNormCuda(nullptr, nullptr, 1, 0, 1e-6f, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(RmsNormCuda(nullptr, nullptr, 0, 8, 1e-6f, nullptr, nullptr).ok());
  EXPECT_GE(CudaDeviceCount(), 0);
}

}  // namespace
}  // namespace moemesh
