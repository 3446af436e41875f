// The expert worker on a GPU (--device cuda) against the same worker on the
// CPU kernels, for fixtures of every architecture and the demo model.
// Labelled `gpu`; skips where no GPU is present.
#include "services/expert/cuda_expert_device.h"

#include <cmath>
#include <random>
#include <thread>
#include <vector>

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

// Random rows for `tokens` tokens; each expert in `experts` takes about two
// thirds of them (some none), with random weights.
ExpertWork RandomWork(int layer, const std::vector<int>& experts, int tokens, int h, std::mt19937* rng,
                      std::vector<float>* hidden) {
  std::normal_distribution<float> normal(0.f, 1.f);
  hidden->resize(static_cast<size_t>(tokens) * h);
  for (float& v : *hidden) v = normal(*rng);
  ExpertWork work;
  work.layer = layer;
  work.num_rows = tokens;
  work.hidden_size = h;
  work.hidden_states = hidden->data();
  for (int e : experts) {
    ExpertWork::Group g;
    g.expert = e;
    for (int t = 0; t < tokens; ++t) {
      if ((*rng)() % 3 == 0) continue;  // some experts get no rows at all
      g.rows.push_back(t);
      g.weights.push_back(0.2f + 0.1f * static_cast<float>((*rng)() % 5));
    }
    work.groups.push_back(g);
  }
  return work;
}

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
  for (const auto& [layer, experts] : (*cpu)->HeldExperts()) {
    std::vector<float> hidden;
    const ExpertWork work = RandomWork(layer, experts, 1 + static_cast<int>(rng() % 20), h, &rng, &hidden);
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

// Large requests go in pipelined chunks, and requests from several threads
// run on the lanes side by side: each gets its own answer.
TEST(CudaExpertDeviceLanesTest, ChunksAndConcurrentRequests) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  ExpertWorker::Options o;
  o.model_dir = "tests/fixtures/mixtral";
  auto cpu = ExpertWorker::Create(o);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  CudaExpertDevice::Options lanes;
  lanes.lanes = 2;
  lanes.chunk_rows = 24;  // many chunks, some groups over the GEMM threshold
  o.device = CudaExpertDevice::Factory(0, lanes);
  auto gpu = ExpertWorker::Create(o);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  const int h = (*cpu)->config().hidden_size;
  const auto held = (*cpu)->HeldExperts();
  std::mt19937 rng(5);
  constexpr int kRequests = 12;
  std::vector<std::vector<float>> hidden(kRequests), want(kRequests), got(kRequests);
  std::vector<ExpertWork> works;
  for (int i = 0; i < kRequests; ++i) {
    const auto& [layer, experts] = held[i % held.size()];
    works.push_back(RandomWork(layer, experts, i % 3 == 0 ? 1 + i : 60 + 7 * i, h, &rng, &hidden[i]));
    ASSERT_TRUE((*cpu)->Run(works[i], &want[i]).ok());
  }
  std::vector<absl::Status> status(kRequests);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = t; i < kRequests; i += 4) status[i] = (*gpu)->Run(works[i], &got[i]);
    });
  }
  for (auto& th : threads) th.join();
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(status[i].ok()) << status[i];
    ASSERT_EQ(got[i].size(), want[i].size());
    EXPECT_LT(RelError(got[i], want[i]), 2e-2) << "request " << i;
  }
}

TEST(CudaExpertDeviceErrorsTest, BadOptions) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  ExpertWorker::Options o;
  o.model_dir = "tests/fixtures/mixtral";
  CudaExpertDevice::Options bad;
  bad.lanes = 0;
  o.device = CudaExpertDevice::Factory(0, bad);
  EXPECT_EQ(ExpertWorker::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CudaExpertDeviceErrorsTest, NoSuchDevice) {
  ExpertWorker::Options o;
  o.model_dir = "tests/fixtures/mixtral";
  o.device = CudaExpertDevice::Factory(CudaDeviceCount() + 3);
  EXPECT_EQ(ExpertWorker::Create(o).status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace moemesh
