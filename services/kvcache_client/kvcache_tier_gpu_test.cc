// A GPU router's second turn after a restart, its first turn's KV blocks
// fetched from the kvcache service (over a real loopback socket, in memory
// shared with the service): the same tokens as computing it on the GPU.
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/engine/cuda/cuda_forward_pass.h"
#include "core/engine/engine.h"
#include "core/engine/scheduler.h"
#include "core/experts/cuda/cuda_expert_device.h"
#include "core/kernels/cuda/cuda_runtime_util.h"
#include "gtest/gtest.h"
#include "services/kvcache/local_kvcache.h"
#include "services/kvcache_client/kvcache_tier.h"

namespace moemesh {
namespace {

class KvCacheTierGpuTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_P(KvCacheTierGpuTest, SecondTurnAfterARestartEqualsComputing) {
  const std::string model = "tests/fixtures/" + GetParam();
  LocalKvCache kv(::testing::TempDir() + "/kvcache_tier_gpu_" + GetParam());
  KvCacheTier::Options to;
  to.addresses = {kv.address()};
  to.shared_memory_bytes = int64_t{64} << 20;  // a router on the service's host
  absl::StatusOr<std::unique_ptr<KvCacheTier>> made = KvCacheTier::Create(to);
  ASSERT_TRUE(made.ok()) << made.status();
  std::shared_ptr<KvCacheTier> tier = std::move(*made);
  GenerateParams p;
  p.sampling.temperature = 0;
  p.max_new_tokens = 6;
  p.logprobs = 2;
  p.ignore_eos = true;
  // Each call a new engine: a router started afresh.
  auto serve = [&](const std::vector<int>& prompt, bool tiered, int64_t* hits) {
    EngineOptions o;
    o.kv_cache_tokens = 1024;
    o.kv_block_size = 4;
    if (tiered) o.kv_tier = tier;
    o.forward_pass = CudaForwardPass::Factory(0);
    o.expert_device = CudaExpertDevice::Factory(0);
    std::vector<StepEvent> events;
    auto engine = Engine::Create(model, o);
    EXPECT_TRUE(engine.ok()) << engine.status();
    if (!engine.ok()) return events;
    std::unique_ptr<Scheduler> sched = (*engine)->NewScheduler(4, 4096);
    EXPECT_TRUE(sched->Add(prompt, p, [&](const StepEvent& ev) { events.push_back(ev); }).ok());
    for (int steps = 0; !sched->idle() && steps < 100; ++steps) {
      EXPECT_TRUE(sched->Step().ok());
      *hits += sched->last_step().tier_hit_tokens;
    }
    tier->Flush();
    return events;
  };
  std::mt19937 rng(9);
  std::vector<int> prompt(21);
  for (int& t : prompt) t = static_cast<int>(rng() % 256);
  int64_t hits = 0, none = 0;
  for (const StepEvent& ev : serve(prompt, true, &hits)) prompt.push_back(ev.token);
  prompt.insert(prompt.end(), {5, 6, 7});
  const std::vector<StepEvent> restarted = serve(prompt, true, &hits), computed = serve(prompt, false, &none);
  EXPECT_EQ(hits, 24);  // 21 + 5 computed positions of the first turn: 6 blocks of 4
  EXPECT_GE(tier->stats().shared_memory_blocks, 1) << "the blocks came through the shared memory";
  ASSERT_EQ(restarted.size(), computed.size());
  for (size_t t = 0; t < computed.size(); ++t) {
    ASSERT_TRUE(restarted[t].error.ok()) << restarted[t].error;
    EXPECT_EQ(restarted[t].token, computed[t].token) << "token " << t;
    // As for the GPU's own prefix cache (cuda_forward_pass_test's
    // kCachedLogprobTol): the passes' row counts differ, hence their
    // kernels and sums' order; a wrong block moves them by whole nats.
    EXPECT_NEAR(restarted[t].logprob, computed[t].logprob, 3e-2) << "token " << t;
  }
  kv.Shutdown();
}

INSTANTIATE_TEST_SUITE_P(Models, KvCacheTierGpuTest, ::testing::Values("mixtral", "qwen3_moe", "deepseek_v3"));

}  // namespace
}  // namespace moemesh
