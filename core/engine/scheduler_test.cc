#include "core/engine/scheduler.h"

#include <map>
#include <random>

#include "core/engine/engine.h"
#include "core/engine/expert_executor.h"
#include "core/engine/model.h"
#include "core/model/safetensors.h"
#include "core/model/weights.h"
#include "core/tensor/thread_pool.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

struct Loaded {
  ModelConfig config;
  std::shared_ptr<const ModelWeights> weights;
  std::unique_ptr<Model> model;
};

Loaded Load(const std::string& dir, ThreadPool* pool) {
  Loaded l;
  l.config = *LoadModelConfig(dir);
  auto w = LoadWeights(std::move(*Checkpoint::Open(dir)), l.config);
  l.weights = std::make_shared<const ModelWeights>(std::move(*w));
  l.model = std::move(*Model::Create(l.config, l.weights, pool));
  return l;
}

struct Job {
  std::vector<int> prompt;
  GenerateParams params;
};

std::vector<Job> MixedJobs(int n, int vocab) {
  std::mt19937 rng(11);
  std::vector<Job> jobs;
  for (int i = 0; i < n; ++i) {
    Job j;
    int len = 1 + static_cast<int>(rng() % 40);
    for (int k = 0; k < len; ++k) j.prompt.push_back(static_cast<int>(rng() % vocab));
    j.params.max_new_tokens = 1 + static_cast<int>(rng() % 20);
    if (i % 3 != 0) {  // two thirds sample, with their own seeds
      j.params.sampling.temperature = 0.7f + 0.1f * (i % 5);
      j.params.sampling.top_p = 0.9f;
      j.params.sampling.presence_penalty = (i % 4) * 0.2f;
      j.params.sampling.seed = 1000 + i;
    }
    jobs.push_back(j);
  }
  return jobs;
}

class SchedulerFixtureTest : public ::testing::TestWithParam<std::string> {};

// 64 concurrent requests of mixed lengths and sampling parameters, batched
// together with chunked prefill, each give exactly the tokens of the same
// request run alone.
TEST_P(SchedulerFixtureTest, ConcurrentRequestsEqualRunsAlone) {
  const std::string dir = "tests/fixtures/" + GetParam();
  ThreadPool pool(2);
  Loaded l = Load(dir, &pool);
  KvCache cache(l.config.num_layers, l.model->kv_k_width(), l.model->kv_v_width(), 8, 512);
  LocalExpertExecutor experts(&l.weights->experts, &pool);
  // Prompts go in chunks of 7 on both sides: with dynamic rope the
  // frequencies depend on the longest position of each pass, as in
  // transformers, so chunk boundaries must agree.
  Scheduler sched(l.model.get(), &cache, &experts, {64, 4096, 7});
  std::vector<Job> jobs = MixedJobs(64, l.config.vocab_size);
  std::map<int64_t, size_t> job_of;
  std::vector<std::vector<int>> got(jobs.size());
  std::vector<bool> finished(jobs.size(), false);
  for (size_t i = 0; i < jobs.size(); ++i) {
    auto id = sched.Add(jobs[i].prompt, jobs[i].params, [&, i](const StepEvent& ev) {
      ASSERT_TRUE(ev.error.ok()) << ev.error;
      ASSERT_FALSE(finished[i]);
      got[i].push_back(ev.token);
      finished[i] = ev.finished;
    });
    ASSERT_TRUE(id.ok()) << id.status();
  }
  int steps = 0;
  while (!sched.idle()) {
    ASSERT_TRUE(sched.Step().ok());
    ASSERT_LT(++steps, 10000);
  }
  EXPECT_EQ(cache.free_blocks(), cache.num_blocks());
  EngineOptions alone_options;
  alone_options.prefill_chunk = 7;
  auto engine = Engine::Create(dir, alone_options);
  ASSERT_TRUE(engine.ok());
  for (size_t i = 0; i < jobs.size(); ++i) {
    EXPECT_TRUE(finished[i]) << i;
    auto alone = (*engine)->Generate(jobs[i].prompt, jobs[i].params);
    ASSERT_TRUE(alone.ok());
    EXPECT_EQ(got[i], alone->tokens) << "request " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, SchedulerFixtureTest,
                         ::testing::Values("mixtral_sliding", "deepseek_v3", "qwen2_moe", "olmoe_dynamic"));

TEST(SchedulerTest, CancelFreesTheCacheAtOnce) {
  Loaded l = Load("tests/fixtures/qwen3_moe", nullptr);
  KvCache cache(l.config.num_layers, l.model->kv_k_width(), l.model->kv_v_width(), 4, 1024);
  LocalExpertExecutor experts(&l.weights->experts, nullptr);
  Scheduler sched(l.model.get(), &cache, &experts, {});
  std::vector<int64_t> ids;
  std::map<int64_t, int> events;
  GenerateParams p;
  p.max_new_tokens = 50;
  for (int i = 0; i < 32; ++i) {
    std::vector<int> prompt(10 + i, 7 + i);
    auto id = sched.Add(prompt, p, [&](const StepEvent& ev) { ++events[ev.request_id]; });
    ASSERT_TRUE(id.ok());
    ids.push_back(*id);
  }
  for (int s = 0; s < 5; ++s) ASSERT_TRUE(sched.Step().ok());
  EXPECT_EQ(sched.num_running(), 32);
  int free_before = cache.free_blocks();
  for (int i = 0; i < 32; i += 2) EXPECT_TRUE(sched.Cancel(ids[i]));
  EXPECT_EQ(sched.num_running(), 16);
  EXPECT_GT(cache.free_blocks(), free_before);  // freed now, not at the next step
  EXPECT_FALSE(sched.Cancel(ids[0]));           // already gone
  std::map<int64_t, int> at_cancel = events;
  while (!sched.idle()) ASSERT_TRUE(sched.Step().ok());
  for (int i = 0; i < 32; ++i) {
    if (i % 2 == 0) {
      EXPECT_EQ(events[ids[i]], at_cancel[ids[i]]) << "events after cancel";
    } else {
      EXPECT_EQ(events[ids[i]], 50);
    }
  }
  EXPECT_EQ(cache.free_blocks(), cache.num_blocks());
}

TEST(SchedulerTest, AdmissionWaitsForCacheAndRejectsWhatCanNeverFit) {
  Loaded l = Load("tests/fixtures/mixtral", nullptr);
  // 8 blocks of 4 tokens: room for two 12-token requests at a time.
  KvCache cache(l.config.num_layers, l.model->kv_k_width(), l.model->kv_v_width(), 4, 8);
  LocalExpertExecutor experts(&l.weights->experts, nullptr);
  Scheduler sched(l.model.get(), &cache, &experts, {});
  GenerateParams p;
  p.max_new_tokens = 6;
  int finished = 0;
  for (int i = 0; i < 5; ++i) {
    auto id = sched.Add({1, 2, 3, 4, 5, 6}, p, [&](const StepEvent& ev) { finished += ev.finished; });
    ASSERT_TRUE(id.ok());
  }
  ASSERT_TRUE(sched.Step().ok());
  EXPECT_EQ(sched.num_running(), 2);
  EXPECT_EQ(sched.num_waiting(), 3);
  while (!sched.idle()) ASSERT_TRUE(sched.Step().ok());
  EXPECT_EQ(finished, 5);
  p.max_new_tokens = 40;
  auto too_big = sched.Add({1, 2, 3}, p, [](const StepEvent&) {});
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(sched.Add({}, p, [](const StepEvent&) {}).status().code(), absl::StatusCode::kInvalidArgument);
}

class FailingExecutor : public ExpertExecutor {
 public:
  absl::Status Execute(const ExpertBatch&, float*) override { return absl::UnavailableError("worker lost"); }
};

TEST(SchedulerTest, AFailedPassFailsItsRequests) {
  Loaded l = Load("tests/fixtures/mixtral", nullptr);
  KvCache cache(l.config.num_layers, l.model->kv_k_width(), l.model->kv_v_width(), 4, 64);
  FailingExecutor experts;
  Scheduler sched(l.model.get(), &cache, &experts, {});
  std::vector<absl::Status> errors;
  GenerateParams p;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(sched.Add({1, 2, 3}, p, [&](const StepEvent& ev) { errors.push_back(ev.error); }).ok());
  }
  EXPECT_EQ(sched.Step().code(), absl::StatusCode::kUnavailable);
  ASSERT_EQ(errors.size(), 3u);
  for (const auto& e : errors) EXPECT_EQ(e.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(sched.idle());
  EXPECT_EQ(cache.free_blocks(), cache.num_blocks());
}

}  // namespace
}  // namespace moemesh
