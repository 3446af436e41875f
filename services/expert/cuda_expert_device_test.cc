// The expert worker on a GPU (--device cuda) against the same worker on the
// CPU kernels, for fixtures of every architecture and the demo model.
// Labelled `gpu`; skips where no GPU is present.
#include "services/expert/cuda_expert_device.h"

#include <cmath>
#include <random>

#include "core/tensor/rel_error.h"
#include "gtest/gtest.h"
#include "services/expert/expert_worker.h"

namespace moemesh {
namespace {

class CudaExpertDeviceTest : public ::testing::TestWithParam<std::pair<std::string, double>> {
 protected:
  void SetUp() override {
    if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

// Every MoE layer, every expert of the shard, random rows and weights.
TEST_P(CudaExpertDeviceTest, MatchesTheCpuWorker) {
  const auto& [model, tolerance] = GetParam();
  ExpertWorker::Options o;
  o.model_dir = model;
  o.shard_index = 1;
  o.num_shards = 2;
  auto cpu = ExpertWorker::Create(o);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  o.device = CudaExpertDevice::Factory(0);
  auto gpu = ExpertWorker::Create(o);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  const int h = (*cpu)->config().hidden_size;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (const auto& [layer, experts] : (*cpu)->HeldExperts()) {
    const int tokens = 1 + static_cast<int>(rng() % 20);
    std::vector<float> hidden(static_cast<size_t>(tokens) * h);
    for (float& v : hidden) v = normal(rng);
    ExpertWork work;
    work.layer = layer;
    work.num_rows = tokens;
    work.hidden_size = h;
    work.hidden_states = hidden.data();
    for (int e : experts) {
      ExpertWork::Group g;
      g.expert = e;
      for (int t = 0; t < tokens; ++t) {
        if (rng() % 3 == 0) continue;  // some experts get no rows at all
        g.rows.push_back(t);
        g.weights.push_back(0.2f + 0.1f * static_cast<float>(rng() % 5));
      }
      work.groups.push_back(g);
    }
    std::vector<float> want, got;
    ASSERT_TRUE((*cpu)->Run(work, &want).ok());
    ASSERT_TRUE((*gpu)->Run(work, &got).ok());
    ASSERT_EQ(got.size(), want.size());
    EXPECT_LT(RelError(got, want), tolerance) << model << " layer " << layer;
  }
}

// The GPU takes the rows and the activations between the two products in
// bf16 (CudaExpertFfn), the CPU in fp32: within 5e-3 of the norm for bf16
// checkpoints. F32 fixtures' weights are also rounded to bf16 on the GPU.
INSTANTIATE_TEST_SUITE_P(Models, CudaExpertDeviceTest,
                         ::testing::Values(std::pair<std::string, double>{"models/fortune-moe", 5e-3},
                                           std::pair<std::string, double>{"tests/fixtures/mixtral", 2e-2},
                                           std::pair<std::string, double>{"tests/fixtures/qwen2_moe", 2e-2},
                                           std::pair<std::string, double>{"tests/fixtures/deepseek_v3", 2e-2},
                                           std::pair<std::string, double>{"tests/fixtures/olmoe", 2e-2}));

TEST(CudaExpertDeviceErrorsTest, NoSuchDevice) {
  ExpertWorker::Options o;
  o.model_dir = "tests/fixtures/mixtral";
  o.device = CudaExpertDevice::Factory(CudaDeviceCount() + 3);
  EXPECT_EQ(ExpertWorker::Create(o).status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace moemesh
