// Experts on a GPU against the same experts on the CPU kernels, for fixtures
// of every architecture and the demo model: rows in host memory (an expert
// worker's), rows in device memory (a forward pass on the same GPU), per
// expert and combined per token. Labelled `gpu`; skips where no GPU is
// present.
#include "core/experts/cuda/cuda_expert_device.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "core/experts/cpu_expert_device.h"
#include "core/experts/expert_executor.h"
#include "core/experts/expert_work.h"
#include "core/experts/placement.h"
#include "core/model/config.h"
#include "core/model/safetensors.h"
#include "core/model/weights.h"
#include "core/tensor/dtype.h"
#include "core/tensor/rel_error.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

// The last shard of `shards` of a model's experts (by default 1 of 2; all
// of them with 1), on the CPU and on GPU 0.
struct Devices {
  ModelConfig config;
  std::unique_ptr<ModelWeights> weights;
  std::unique_ptr<ExpertDevice> cpu, gpu;
  std::vector<std::pair<int, std::vector<int>>> held;  // (layer, experts)
};

Devices Load(const std::string& dir, const CudaExpertDevice::Options& options = {}, int shards = 2) {
  Devices d;
  auto config = LoadModelConfig(dir);
  auto ckpt = Checkpoint::Open(dir);
  EXPECT_TRUE(config.ok() && ckpt.ok());
  if (!config.ok() || !ckpt.ok()) return d;
  d.config = *config;
  const ShardPlacement placement(shards);
  const int shard = shards - 1;
  WeightLoadOptions load;
  load.load_dense = false;
  load.load_expert = [&](int layer, int expert) { return placement.Holds(shard, layer, expert); };
  auto w = LoadWeights(std::move(*ckpt), d.config, load);
  EXPECT_TRUE(w.ok()) << w.status();
  if (!w.ok()) return d;
  d.weights = std::make_unique<ModelWeights>(std::move(*w));
  d.cpu = std::make_unique<CpuExpertDevice>(&d.weights->experts, nullptr);
  auto gpu = CudaExpertDevice::Create(d.config, *d.weights, 0, options);
  EXPECT_TRUE(gpu.ok()) << gpu.status();
  if (gpu.ok()) d.gpu = std::move(*gpu);
  for (int l = 0; l < d.config.num_layers; ++l) {
    std::vector<int> experts = placement.ExpertsOf(shard, l, d.config.num_experts);
    if (d.config.is_moe_layer[l] && !experts.empty()) d.held.emplace_back(l, experts);
  }
  return d;
}

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

// `work`'s rows moved to the device: Run and RunCombined there, read back.
struct OnDevice {
  std::vector<float> rows, combined;
};
OnDevice RunOnDevice(ExpertDevice* gpu, ExpertWork work) {
  OnDevice r;
  const size_t h = work.hidden_size;
  auto x = DeviceBuffer::Allocate(static_cast<size_t>(work.num_rows) * h * sizeof(float));
  auto y = DeviceBuffer::Allocate(std::max<size_t>(work.total_rows(), 1) * h * sizeof(float));
  auto z = DeviceBuffer::Allocate(static_cast<size_t>(work.num_rows) * h * sizeof(float));
  EXPECT_TRUE(x.ok() && y.ok() && z.ok());
  EXPECT_TRUE((*x)->CopyFrom(work.hidden_states, (*x)->bytes()).ok());
  EXPECT_TRUE((*z)->Fill(0x7f).ok());  // poison: every row must be written
  work.hidden_states = (*x)->as<float>();
  work.on_device = true;
  EXPECT_TRUE(gpu->Run(work, (*y)->as<float>()).ok());
  EXPECT_TRUE(gpu->RunCombined(work, (*z)->as<float>()).ok());
  EXPECT_TRUE(CudaSynchronize(nullptr).ok());
  r.rows.resize(work.total_rows() * h);
  r.combined.resize(static_cast<size_t>(work.num_rows) * h);
  EXPECT_TRUE((*y)->CopyTo(r.rows.data(), r.rows.size() * sizeof(float)).ok());
  EXPECT_TRUE((*z)->CopyTo(r.combined.data(), r.combined.size() * sizeof(float)).ok());
  return r;
}

class CudaExpertDeviceTest : public ::testing::TestWithParam<std::pair<std::string, double>> {
 protected:
  void SetUp() override {
    if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

// Every MoE layer, every expert of the shard, random rows and weights; from
// host memory and from device memory, per expert and combined.
TEST_P(CudaExpertDeviceTest, MatchesTheCpu) {
  const auto& [model, tolerance] = GetParam();
  Devices d = Load(model);
  ASSERT_TRUE(d.cpu && d.gpu);
  EXPECT_EQ(d.gpu->cuda_device(), 0);
  const int h = d.config.hidden_size;
  std::mt19937 rng(3);
  for (const auto& [layer, experts] : d.held) {
    for (int e = 0; e < d.config.num_experts; ++e) EXPECT_EQ(d.gpu->Holds(layer, e), d.cpu->Holds(layer, e));
    std::vector<float> hidden;
    const ExpertWork work = RandomWork(layer, experts, 1 + static_cast<int>(rng() % 20), h, &rng, &hidden);
    std::vector<float> want(work.total_rows() * h), got(want.size());
    std::vector<float> want_combined(static_cast<size_t>(work.num_rows) * h), got_combined(want_combined.size());
    ASSERT_TRUE(d.cpu->Run(work, want.data()).ok());
    ASSERT_TRUE(d.cpu->RunCombined(work, want_combined.data()).ok());
    ASSERT_TRUE(d.gpu->Run(work, got.data()).ok());
    ASSERT_TRUE(d.gpu->RunCombined(work, got_combined.data()).ok());
    EXPECT_LT(RelError(got, want), tolerance) << model << " layer " << layer;
    EXPECT_LT(RelError(got_combined, want_combined), tolerance) << model << " layer " << layer;
    // The device rounds rows to bf16 first: rows sent already rounded (bf16
    // on the wire) give the same bits.
    ASSERT_TRUE(d.gpu->rounds_rows_to_bf16());
    std::vector<float> rounded(hidden.size()), got_rounded(got.size());
    for (size_t i = 0; i < hidden.size(); ++i) rounded[i] = Bf16ToF32(F32ToBf16(hidden[i]));
    ExpertWork rounded_work = work;
    rounded_work.hidden_states = rounded.data();
    ASSERT_TRUE(d.gpu->Run(rounded_work, got_rounded.data()).ok());
    EXPECT_EQ(got_rounded, got) << model << " layer " << layer;
    OnDevice dev = RunOnDevice(d.gpu.get(), work);
    EXPECT_LT(RelError(dev.rows, want), tolerance) << model << " layer " << layer << ", rows on the device";
    // The device's combine adds the same rows in the same order as the host's.
    std::vector<float> combined_here(want_combined.size());
    CombineExpertRows(work, dev.rows.data(), work.num_rows, combined_here.data());
    EXPECT_EQ(dev.combined, combined_here) << model << " layer " << layer;
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

// A step where no token of the batch went to this device's experts: the
// combined rows are zeros, not what the buffer held.
TEST(CudaExpertDeviceEdgesTest, NoRowsCombineToZeros) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  Devices d = Load("tests/fixtures/mixtral");
  ASSERT_TRUE(d.gpu);
  std::vector<float> hidden(3 * d.config.hidden_size, 1.0f);
  ExpertWork work;
  work.layer = d.held[0].first;
  work.num_rows = 3;
  work.hidden_size = d.config.hidden_size;
  work.hidden_states = hidden.data();
  OnDevice dev = RunOnDevice(d.gpu.get(), work);
  EXPECT_EQ(dev.combined, std::vector<float>(hidden.size(), 0.0f));
}

// Large requests go in pipelined chunks, and requests from several threads
// run on the lanes side by side, from host and device memory alike: each
// gets its own answer.
TEST(CudaExpertDeviceLanesTest, ChunksAndConcurrentRequests) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  CudaExpertDevice::Options lanes;
  lanes.lanes = 2;
  lanes.chunk_rows = 24;  // many chunks, some groups over the GEMM threshold
  Devices d = Load("tests/fixtures/mixtral", lanes);
  ASSERT_TRUE(d.cpu && d.gpu);
  const int h = d.config.hidden_size;
  std::mt19937 rng(5);
  constexpr int kRequests = 12;
  std::vector<std::vector<float>> hidden(kRequests), want(kRequests), got(kRequests), got_device(kRequests);
  std::vector<ExpertWork> works;
  for (int i = 0; i < kRequests; ++i) {
    const auto& [layer, experts] = d.held[i % d.held.size()];
    works.push_back(RandomWork(layer, experts, i % 3 == 0 ? 1 + i : 60 + 7 * i, h, &rng, &hidden[i]));
    want[i].resize(works[i].total_rows() * h);
    ASSERT_TRUE(d.cpu->Run(works[i], want[i].data()).ok());
  }
  std::vector<absl::Status> status(kRequests);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = t; i < kRequests; i += 4) {
        got[i].resize(want[i].size());
        status[i] = d.gpu->Run(works[i], got[i].data());
        if (status[i].ok()) got_device[i] = RunOnDevice(d.gpu.get(), works[i]).rows;
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(status[i].ok()) << status[i];
    EXPECT_LT(RelError(got[i], want[i]), 2e-2) << "request " << i;
    EXPECT_LT(RelError(got_device[i], want[i]), 2e-2) << "request " << i << ", rows on the device";
  }
}

// A batch whose routing stays on the GPU (a decode step's): grouped there,
// computed and combined, as the host's grouping of the same batch gives,
// for every MoE layer and batches from one token to past a decode kernel's
// row tiles, with empty slots (-1) and ids outside the layer ignored; and a
// batch past routed_gemm_min_tokens (a prefill chunk's) exactly as the host's.
TEST(CudaExpertDeviceRoutedTest, GroupsOnTheDeviceAsTheHostDoes) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  for (const std::string dir : {"tests/fixtures/mixtral", "tests/fixtures/qwen2_moe", "tests/fixtures/deepseek_v3"}) {
    Devices d = Load(dir, {}, /*shards=*/1);
    ASSERT_TRUE(d.cpu && d.gpu) << dir;
    ASSERT_TRUE(d.gpu->groups_on_device()) << dir;
    const int h = d.config.hidden_size, num_experts = d.config.num_experts;
    const int slots = std::min(d.config.num_experts_per_tok + 1, num_experts);
    std::mt19937 rng(11);
    std::normal_distribution<float> normal(0.f, 1.f);
    for (const auto& held : d.held) {
      const int layer = held.first;
      for (int tokens : {1, 3, 17, 40, 200}) {
        std::vector<float> hidden(static_cast<size_t>(tokens) * h), weights(static_cast<size_t>(tokens) * slots);
        for (float& v : hidden) v = normal(rng);
        std::vector<int> ids(weights.size());
        for (int t = 0; t < tokens; ++t) {
          std::vector<int> experts(num_experts);
          for (int e = 0; e < num_experts; ++e) experts[e] = e;
          std::shuffle(experts.begin(), experts.end(), rng);
          for (int s = 0; s < slots; ++s) {
            const size_t i = static_cast<size_t>(t) * slots + s;
            ids[i] = s == slots - 1 ? (t % 2 ? -1 : num_experts + t) : experts[s];  // the last slot: none
            weights[i] = 0.1f + 0.1f * static_cast<float>(rng() % 7);
          }
        }
        ExpertBatch batch{layer, tokens, h, hidden.data(), slots, ids.data(), weights.data()};
        ExpertWork work;
        std::vector<int> host_ids = ids;
        for (int& id : host_ids) id = id >= num_experts ? -1 : id;  // as the device counts them
        ExpertBatch host_batch = batch;
        host_batch.expert_ids = host_ids.data();
        ASSERT_TRUE(GroupByExpert(host_batch, num_experts, &work).ok());
        std::vector<float> want(hidden.size());
        ASSERT_TRUE(d.cpu->RunCombined(work, want.data()).ok());
        const std::vector<float> host_grouped = RunOnDevice(d.gpu.get(), work).combined;
        // The same batch with everything on the device.
        auto x = DeviceBuffer::Allocate(hidden.size() * sizeof(float));
        auto dev_ids = DeviceBuffer::Allocate(ids.size() * sizeof(int));
        auto dev_w = DeviceBuffer::Allocate(weights.size() * sizeof(float));
        auto out = DeviceBuffer::Allocate(hidden.size() * sizeof(float));
        ASSERT_TRUE(x.ok() && dev_ids.ok() && dev_w.ok() && out.ok());
        ASSERT_TRUE((*x)->CopyFrom(hidden.data(), hidden.size() * sizeof(float)).ok());
        ASSERT_TRUE((*dev_ids)->CopyFrom(ids.data(), ids.size() * sizeof(int)).ok());
        ASSERT_TRUE((*dev_w)->CopyFrom(weights.data(), weights.size() * sizeof(float)).ok());
        ASSERT_TRUE((*out)->Fill(0x7f).ok());  // poison: every row must be written
        ExpertBatch routed{layer, tokens, h, (*x)->as<float>(), slots, (*dev_ids)->as<int>(), (*dev_w)->as<float>()};
        routed.on_device = routed.routing_on_device = true;
        ASSERT_TRUE(d.gpu->RunRouted(routed, (*out)->as<float>()).ok());
        std::vector<float> got(hidden.size());
        ASSERT_TRUE(CudaSynchronize(nullptr).ok());
        ASSERT_TRUE((*out)->CopyTo(got.data(), got.size() * sizeof(float)).ok());
        EXPECT_LT(RelError(got, want), 2e-2) << dir << " layer " << layer << ", " << tokens << " tokens";
        // The GPU's two groupings differ only in which kernel takes groups
        // of 8 rows or more (the grouped GEMM rounds the row-weighted
        // activations to bf16; the decode kernels weight the fp32 output):
        // with fewer tokens, the same kernels give the same sums.
        const bool same_kernels = tokens < 8 || tokens >= CudaExpertDevice::Options().routed_gemm_min_tokens;
        EXPECT_LT(RelError(got, host_grouped), same_kernels ? 1e-6 : 1e-2)
            << dir << " layer " << layer << ", " << tokens << " tokens";
      }
    }
  }
}

// A device with part of a layer's experts cannot group that layer itself.
TEST(CudaExpertDeviceRoutedTest, PartOfTheExpertsGroupsOnTheHost) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  Devices d = Load("tests/fixtures/mixtral");  // shard 1 of 2
  ASSERT_TRUE(d.gpu);
  EXPECT_FALSE(d.gpu->groups_on_device());
  std::vector<float> hidden(d.config.hidden_size);
  std::vector<int> ids = {0};
  std::vector<float> weights = {1.0f};
  ExpertBatch batch{d.held[0].first, 1, d.config.hidden_size, hidden.data(), 1, ids.data(), weights.data()};
  batch.on_device = batch.routing_on_device = true;
  EXPECT_EQ(d.gpu->RunRouted(batch, hidden.data()).code(), absl::StatusCode::kFailedPrecondition);
}

// Rows of another width are refused before anything reads them.
TEST(CudaExpertDeviceErrorsTest, HiddenSizeMismatch) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  Devices d = Load("tests/fixtures/mixtral");
  ASSERT_TRUE(d.gpu);
  std::vector<float> hidden;
  std::mt19937 rng(9);
  ExpertWork work = RandomWork(d.held[0].first, d.held[0].second, 4, d.config.hidden_size, &rng, &hidden);
  work.hidden_size /= 2;
  std::vector<float> out(work.total_rows() * d.config.hidden_size);
  EXPECT_EQ(d.gpu->Run(work, out.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(d.gpu->RunCombined(work, out.data()).code(), absl::StatusCode::kInvalidArgument);
}

TEST(CudaExpertDeviceErrorsTest, BadOptions) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto config = LoadModelConfig("tests/fixtures/mixtral");
  ASSERT_TRUE(config.ok());
  ModelWeights none;
  CudaExpertDevice::Options bad;
  bad.lanes = 0;
  EXPECT_EQ(CudaExpertDevice::Create(*config, none, 0, bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CudaExpertDeviceErrorsTest, NoSuchDevice) {
  auto config = LoadModelConfig("tests/fixtures/mixtral");
  ASSERT_TRUE(config.ok());
  ModelWeights none;
  EXPECT_EQ(CudaExpertDevice::Create(*config, none, CudaDeviceCount() + 3).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace moemesh
