#include "core/engine/scheduler.h"

#include <atomic>
#include <map>
#include <thread>
#include <random>

#include "absl/synchronization/notification.h"
#include "core/engine/engine.h"
#include "core/kv/host_kv_tier.h"
#include "core/experts/local_expert_executor.h"
#include "core/engine/cpu_forward_pass.h"
#include "core/model/safetensors.h"
#include "core/model/weights.h"
#include "core/tensor/thread_pool.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

struct Loaded {
  ModelConfig config;
  std::shared_ptr<const ModelWeights> weights;
  std::unique_ptr<CpuForwardPass> model;
};

Loaded Load(const std::string& dir, ThreadPool* pool) {
  Loaded l;
  l.config = *LoadModelConfig(dir);
  auto w = LoadWeights(std::move(*Checkpoint::Open(dir)), l.config);
  l.weights = std::make_shared<const ModelWeights>(std::move(*w));
  l.model = std::move(*CpuForwardPass::Create(l.config, l.weights, pool));
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
    j.params.sampling.temperature = 0;  // a third greedy
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

// A conversation's second turn (its prompt: the first turn's prompt and
// answer, then new tokens) starts from the blocks the first turn cached,
// prompt and generated tokens alike, and gives the tokens and log
// probabilities it gives computed in full; and so does a request sharing
// only a prompt head, run beside it. Dynamic (NTK) rope caches nothing.
class PrefixCachingTest : public ::testing::TestWithParam<std::string> {};

TEST_P(PrefixCachingTest, CachedTurnsEqualComputedTurns) {
  const std::string dir = "tests/fixtures/" + GetParam();
  Loaded l = Load(dir, nullptr);
  const int vocab = l.config.vocab_size;
  std::mt19937 rng(3);
  auto random_tokens = [&](int n) {
    std::vector<int> v(n);
    for (int& t : v) t = static_cast<int>(rng() % vocab);
    return v;
  };
  const std::vector<int> first = random_tokens(22), extra = random_tokens(5), other_tail = random_tokens(9);
  GenerateParams p;
  p.sampling.temperature = 0;
  p.max_new_tokens = 7;
  p.logprobs = 3;
  p.ignore_eos = true;
  struct Turns {
    std::vector<std::vector<StepEvent>> events;
    int64_t queried = 0, hits = 0;
  };
  auto run = [&](bool caching) {
    KvCache cache(l.config.num_layers, l.model->kv_k_width(), l.model->kv_v_width(), 4, 64);
    LocalExpertExecutor experts(&l.weights->experts, nullptr);
    Scheduler sched(l.model.get(), &cache, &experts, {8, 4096, 512, caching});
    Turns out;
    auto serve = [&](const std::vector<std::vector<int>>& prompts) {
      const size_t base = out.events.size();
      out.events.resize(base + prompts.size());
      for (size_t i = 0; i < prompts.size(); ++i) {
        EXPECT_TRUE(
            sched.Add(prompts[i], p, [&, i, base](const StepEvent& ev) { out.events[base + i].push_back(ev); }).ok());
      }
      for (int steps = 0; !sched.idle() && steps < 1000; ++steps) {
        EXPECT_TRUE(sched.Step().ok());
        out.queried += sched.last_step().prefix_query_tokens;
        out.hits += sched.last_step().prefix_hit_tokens;
      }
    };
    serve({first});
    std::vector<int> second = first;
    for (const StepEvent& ev : out.events[0]) second.push_back(ev.token);
    second.insert(second.end(), extra.begin(), extra.end());
    std::vector<int> sibling(first.begin(), first.begin() + 12);
    sibling.insert(sibling.end(), other_tail.begin(), other_tail.end());
    serve({second, sibling});
    EXPECT_EQ(cache.free_blocks(), cache.num_blocks());
    return out;
  };
  const Turns cached = run(true), computed = run(false);
  EXPECT_EQ(computed.hits, 0);
  if (l.config.rope.type == RopeType::kDynamic) {
    EXPECT_EQ(cached.queried, 0);
  } else {
    // The first turn left 22 + 6 computed positions: 7 blocks of 4. The
    // second turn reuses all of them; its sibling the first 12 tokens.
    EXPECT_EQ(cached.queried, 22 + (22 + 7 + 5) + 21);
    EXPECT_EQ(cached.hits, 28 + 12);
  }
  ASSERT_EQ(cached.events.size(), computed.events.size());
  for (size_t r = 0; r < cached.events.size(); ++r) {
    ASSERT_EQ(cached.events[r].size(), computed.events[r].size()) << r;
    for (size_t t = 0; t < cached.events[r].size(); ++t) {
      const StepEvent &a = cached.events[r][t], &b = computed.events[r][t];
      ASSERT_TRUE(a.error.ok() && b.error.ok()) << a.error << b.error;
      EXPECT_EQ(a.token, b.token) << "request " << r << " token " << t;
      EXPECT_NEAR(a.logprob, b.logprob, 1e-4) << "request " << r << " token " << t;
      ASSERT_EQ(a.top_logprobs.size(), b.top_logprobs.size());
      for (size_t k = 0; k < a.top_logprobs.size(); ++k) {
        EXPECT_NEAR(a.top_logprobs[k].logprob, b.top_logprobs[k].logprob, 1e-4);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, PrefixCachingTest,
                         ::testing::Values("mixtral", "mixtral_sliding", "deepseek_v3", "deepseek_v3_nolora",
                                           "qwen2_moe", "qwen3_moe", "olmoe", "olmoe_dynamic"));

// A tier that is down.
class UnreachableTier : public KvTier {
 public:
  absl::StatusOr<std::vector<KvTierBlock>> Fetch(const BlockHash&, absl::Span<const BlockHash>, size_t) override {
    ++fetches;
    return absl::UnavailableError("the kvcache service is down");
  }
  void Store(const BlockHash&, const BlockHash&, std::vector<KvTierBlock>) override {}
  int fetches = 0;
};

// A tier whose fetches wait until released.
class HeldTier : public KvTier {
 public:
  absl::StatusOr<std::vector<KvTierBlock>> Fetch(const BlockHash&, absl::Span<const BlockHash>, size_t) override {
    release.WaitForNotification();
    return std::vector<KvTierBlock>();
  }
  void Store(const BlockHash&, const BlockHash&, std::vector<KvTierBlock>) override {}
  absl::Notification release;
};

// Cancelling a request whose fetch is still out returns at once (the fetch
// is left to finish on its own), and the others go on.
TEST(SchedulerTest, CancellingARequestWaitingOnItsFetchDoesNotWaitForIt) {
  Loaded l = Load("tests/fixtures/mixtral", nullptr);
  KvCache cache(l.config.num_layers, l.model->kv_k_width(), l.model->kv_v_width(), 4, 64);
  LocalExpertExecutor experts(&l.weights->experts, nullptr);
  HeldTier tier;
  Scheduler::Options o{8, 4096, 512, true};
  o.kv_tier = &tier;
  Scheduler sched(l.model.get(), &cache, &experts, o);
  GenerateParams p;
  p.sampling.temperature = 0;
  p.max_new_tokens = 2;
  std::vector<int> prompt(20, 7);  // full blocks past an empty cache: a fetch
  auto waiting = sched.Add(prompt, p, [](const StepEvent&) {});
  ASSERT_TRUE(waiting.ok());
  ASSERT_TRUE(sched.Step().ok());
  EXPECT_EQ(sched.num_waiting(), 1);
  std::atomic<bool> watchdog_fired{false};
  absl::Notification cancelled;
  std::thread watchdog([&] {  // frees a Cancel that would wait for the fetch
    if (!cancelled.WaitForNotificationWithTimeout(absl::Seconds(5))) {
      watchdog_fired = true;
      tier.release.Notify();
    }
  });
  EXPECT_TRUE(sched.Cancel(*waiting));
  cancelled.Notify();
  EXPECT_FALSE(watchdog_fired.load()) << "Cancel waited for the fetch";
  std::vector<int> short_prompt = {1, 2, 3};  // no full block: no fetch
  int tokens = 0;
  ASSERT_TRUE(sched.Add(short_prompt, p, [&](const StepEvent& ev) { tokens += ev.token >= 0; }).ok());
  for (int steps = 0; tokens < 2 && steps < 50; ++steps) ASSERT_TRUE(sched.Step().ok());
  EXPECT_EQ(tokens, 2);
  if (!tier.release.HasBeenNotified()) tier.release.Notify();
  watchdog.join();
}

// A second turn on another router (a new cache, a new scheduler) over the
// same lower tier: the blocks the first router computed come back by copy,
// and every token and log probability equals computing the turn; a cache of
// another root finds nothing there, and a tier that is down costs only the
// recompute.
class TieredCacheTest : public ::testing::TestWithParam<std::string> {};

TEST_P(TieredCacheTest, SecondTurnOnAnotherRouterEqualsComputing) {
  const std::string dir = "tests/fixtures/" + GetParam();
  Loaded l = Load(dir, nullptr);
  std::mt19937 rng(5);
  std::vector<int> first(22), extra(5);
  for (int& t : first) t = static_cast<int>(rng() % l.config.vocab_size);
  for (int& t : extra) t = static_cast<int>(rng() % l.config.vocab_size);
  GenerateParams p;
  p.sampling.temperature = 0;
  p.max_new_tokens = 7;
  p.logprobs = 2;
  p.ignore_eos = true;
  const BlockHash root = HashBytes(dir);
  struct Served {
    std::vector<StepEvent> events;
    int64_t tier_hits = 0, fallbacks = 0, stored = 0;
  };
  // One router's life: a fresh cache and scheduler serving one prompt.
  auto serve = [&](const std::vector<int>& prompt, KvTier* tier, bool caching, const BlockHash& cache_root) {
    KvCache cache(l.config.num_layers, l.model->kv_k_width(), l.model->kv_v_width(), 4, 64, cache_root);
    LocalExpertExecutor experts(&l.weights->experts, nullptr);
    Scheduler::Options o{8, 4096, 512, caching};
    o.kv_tier = tier;
    Scheduler sched(l.model.get(), &cache, &experts, o);
    Served out;
    EXPECT_TRUE(sched.Add(prompt, p, [&](const StepEvent& ev) { out.events.push_back(ev); }).ok());
    for (int steps = 0; !sched.idle() && steps < 1000; ++steps) {
      EXPECT_TRUE(sched.Step().ok());
      out.tier_hits += sched.last_step().tier_hit_tokens;
      out.fallbacks += sched.last_step().tier_fallbacks;
      out.stored += sched.last_step().tier_stored_blocks;
    }
    return out;
  };
  HostKvTier tier(int64_t{1} << 30);
  const Served turn1 = serve(first, &tier, true, root);
  std::vector<int> second = first;
  for (const StepEvent& ev : turn1.events) second.push_back(ev.token);
  second.insert(second.end(), extra.begin(), extra.end());
  const Served tiered = serve(second, &tier, true, root);
  const int64_t tier_blocks = tier.blocks();
  const Served computed = serve(second, nullptr, false, root);
  const Served other_model = serve(second, &tier, true, HashBytes("another model"));
  UnreachableTier down;
  const Served fallback = serve(second, &down, true, root);

  if (l.config.rope.type == RopeType::kDynamic) {  // no prefix caching, no tier
    EXPECT_EQ(turn1.stored, 0);
    EXPECT_EQ(tiered.tier_hits, 0);
    EXPECT_EQ(down.fetches, 0);
  } else {
    // Turn 1 computed 22 + 6 positions: 7 blocks of 4, all given to the
    // tier; turn 2 (34 tokens) fetches all 7 and computes the rest.
    EXPECT_EQ(turn1.stored, 7);
    EXPECT_EQ(tier_blocks, (34 + 6) / 4);  // and turn 2 gave it its 3 new ones
    EXPECT_EQ(tiered.tier_hits, 28);
    EXPECT_EQ(other_model.tier_hits, 0);
    EXPECT_EQ(down.fetches, 1);
    EXPECT_EQ(fallback.fallbacks, 1);
  }
  for (const Served* s : {&tiered, &other_model, &fallback}) {
    ASSERT_EQ(s->events.size(), computed.events.size());
    for (size_t t = 0; t < computed.events.size(); ++t) {
      const StepEvent &a = s->events[t], &b = computed.events[t];
      ASSERT_TRUE(a.error.ok()) << a.error;
      EXPECT_EQ(a.token, b.token) << "token " << t;
      EXPECT_NEAR(a.logprob, b.logprob, 1e-4) << "token " << t;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, TieredCacheTest,
                         ::testing::Values("mixtral", "mixtral_sliding", "deepseek_v3", "deepseek_v3_nolora",
                                           "qwen2_moe", "qwen3_moe", "olmoe", "olmoe_dynamic"));

// Requests admitted together with one long prompt head: those whose first
// chunk comes after another's take the blocks it cached meanwhile, and all
// give the tokens they give with caching off.
TEST(SchedulerTest, RequestsAdmittedTogetherShareWhatTheFirstComputes) {
  Loaded l = Load("tests/fixtures/qwen3_moe", nullptr);
  std::mt19937 rng(8);
  std::vector<int> head(40);
  for (int& t : head) t = static_cast<int>(rng() % l.config.vocab_size);
  GenerateParams p;
  p.sampling.temperature = 0;
  p.max_new_tokens = 4;
  p.ignore_eos = true;
  auto run = [&](bool caching, int64_t* hits) {
    KvCache cache(l.config.num_layers, l.model->kv_k_width(), l.model->kv_v_width(), 4, 256);
    LocalExpertExecutor experts(&l.weights->experts, nullptr);
    // A step takes 16 prompt tokens, so the head takes three steps.
    Scheduler sched(l.model.get(), &cache, &experts, {8, 16, 16, caching});
    std::vector<std::vector<int>> tokens(6);
    for (int i = 0; i < 6; ++i) {
      std::vector<int> prompt = head;
      prompt.push_back(100 + i);
      EXPECT_TRUE(sched.Add(prompt, p, [&, i](const StepEvent& ev) { tokens[i].push_back(ev.token); }).ok());
    }
    for (int steps = 0; !sched.idle() && steps < 200; ++steps) {
      EXPECT_TRUE(sched.Step().ok());
      *hits += sched.last_step().prefix_hit_tokens;
    }
    return tokens;
  };
  int64_t on_hits = 0, off_hits = 0;
  EXPECT_EQ(run(true, &on_hits), run(false, &off_hits));
  EXPECT_EQ(off_hits, 0);
  // The second starts in the first's last head step, from its first 32
  // tokens; the four after it read the whole head.
  EXPECT_EQ(on_hits, 32 + 4 * 40);
}

// 64 streams sharing a long system prompt: they reuse its blocks (most of
// their prompt tokens come from the cache) and give exactly the tokens
// they give with caching off.
TEST(SchedulerTest, SixtyFourStreamsSharingASystemPromptReuseItsBlocks) {
  Loaded l = Load("tests/fixtures/mixtral", nullptr);
  std::mt19937 rng(64);
  std::vector<int> system(200);
  for (int& t : system) t = static_cast<int>(rng() % l.config.vocab_size);
  GenerateParams p;
  p.sampling.temperature = 0;
  p.max_new_tokens = 3;
  p.ignore_eos = true;
  auto run = [&](bool caching, int64_t* queried, int64_t* hits) {
    KvCache cache(l.config.num_layers, l.model->kv_k_width(), l.model->kv_v_width(), 16, 2048);
    LocalExpertExecutor experts(&l.weights->experts, nullptr);
    Scheduler sched(l.model.get(), &cache, &experts, {64, 2048, 512, caching});
    std::vector<std::vector<int>> tokens(64);
    for (int i = 0; i < 64; ++i) {
      std::vector<int> prompt = system;
      for (int k = 0; k < 8; ++k) prompt.push_back(static_cast<int>(rng() % l.config.vocab_size));
      EXPECT_TRUE(sched.Add(prompt, p, [&, i](const StepEvent& ev) { tokens[i].push_back(ev.token); }).ok());
    }
    for (int steps = 0; !sched.idle() && steps < 500; ++steps) {
      EXPECT_TRUE(sched.Step().ok());
      *queried += sched.last_step().prefix_query_tokens;
      *hits += sched.last_step().prefix_hit_tokens;
    }
    return tokens;
  };
  int64_t queried = 0, hits = 0, off_queried = 0, off_hits = 0;
  const std::mt19937 start = rng;
  const auto cached = run(true, &queried, &hits);
  rng = start;  // the same prompts again
  EXPECT_EQ(cached, run(false, &off_queried, &off_hits));
  EXPECT_EQ(off_hits, 0);
  EXPECT_EQ(queried, 64 * 208);
  std::printf("64 streams sharing a 200-token prompt: prefix-cache hit rate %.1f%%\n",
              100.0 * static_cast<double>(hits) / static_cast<double>(queried));
  // The first step's 2,048 tokens hold 9 whole prompts and 176 tokens of a
  // tenth: those compute the shared prompt. The tenth then takes its 12th
  // block from the cache (16 tokens), and the other 54 all 12 full blocks
  // of the shared 200 tokens (192).
  EXPECT_EQ(hits, 54 * 192 + 16);
}

TEST(SchedulerTest, CancelFreesTheCacheAtOnce) {
  Loaded l = Load("tests/fixtures/qwen3_moe", nullptr);
  KvCache cache(l.config.num_layers, l.model->kv_k_width(), l.model->kv_v_width(), 4, 1024);
  LocalExpertExecutor experts(&l.weights->experts, nullptr);
  Scheduler sched(l.model.get(), &cache, &experts, {});
  std::vector<int64_t> ids;
  std::map<int64_t, int> events;
  GenerateParams p;
  p.sampling.temperature = 0;  // greedy
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
  p.sampling.temperature = 0;  // greedy
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

// The CPU CpuForwardPass behind the interface a GPU pass offers: it keeps each
// step's logits and samples them itself (SampleLast), so that the
// scheduler's device-sampling path runs here, without a GPU.
class KeepsLogits : public ForwardPass {
 public:
  explicit KeepsLogits(ForwardPass* inner) : inner_(inner) {}
  const ModelConfig& config() const override { return inner_->config(); }
  absl::Status Forward(absl::Span<const ForwardItem> items, KvCache* cache, ExpertExecutor* experts,
                       std::vector<float>* logits) override {
    if (logits != nullptr) return inner_->Forward(items, cache, experts, logits);
    kept_.clear();
    return inner_->Forward(items, cache, experts, &kept_);
  }
  bool samples_on_device() const override { return true; }
  absl::Status SampleLast(absl::Span<const DeviceSampleRow> rows, std::vector<int>* tokens,
                          std::vector<float>* raw) override {
    const int vocab = config().vocab_size;
    for (const DeviceSampleRow& r : rows) {
      float* row = kept_.data() + static_cast<size_t>(r.row) * vocab;
      if (r.want_logits) raw->insert(raw->end(), row, row + vocab);
      tokens->push_back(SampleWithDraw(r.params, r.penalty_tokens, r.uniform, row, vocab));
    }
    return absl::OkStatus();
  }

 private:
  ForwardPass* inner_;
  std::vector<float> kept_;
};

// Sampling where the pass keeps its logits (as on a GPU) gives the tokens
// and log probabilities of sampling on the host, for requests batched
// together with every sampling parameter and logprobs.
TEST(SchedulerTest, DeviceSamplingPathMatchesHostSampling) {
  Loaded l = Load("tests/fixtures/mixtral", nullptr);
  KeepsLogits keeps(l.model.get());
  std::vector<Job> jobs = MixedJobs(24, l.config.vocab_size);
  for (size_t i = 0; i < jobs.size(); ++i) {
    if (i % 2 == 0) jobs[i].params.logprobs = 3;
    if (i % 4 == 1) jobs[i].params.sampling.repetition_penalty = 1.3f;
    if (i % 6 == 2) jobs[i].params.sampling.top_k = 5, jobs[i].params.sampling.min_p = 0.05f;
  }
  auto run = [&](ForwardPass* pass) {
    KvCache cache(l.config.num_layers, pass->kv_k_width(), pass->kv_v_width(), 8, 256);
    LocalExpertExecutor experts(&l.weights->experts, nullptr);
    Scheduler sched(pass, &cache, &experts, {24, 4096, 7});
    std::vector<std::vector<StepEvent>> events(jobs.size());
    for (size_t i = 0; i < jobs.size(); ++i) {
      EXPECT_TRUE(
          sched.Add(jobs[i].prompt, jobs[i].params, [&, i](const StepEvent& ev) { events[i].push_back(ev); }).ok());
    }
    for (int steps = 0; !sched.idle() && steps < 1000; ++steps) EXPECT_TRUE(sched.Step().ok());
    return events;
  };
  const auto host = run(l.model.get()), device = run(&keeps);
  for (size_t i = 0; i < jobs.size(); ++i) {
    ASSERT_EQ(host[i].size(), device[i].size()) << "request " << i;
    for (size_t t = 0; t < host[i].size(); ++t) {
      const StepEvent &a = host[i][t], &b = device[i][t];
      ASSERT_TRUE(b.error.ok()) << b.error;
      EXPECT_EQ(a.token, b.token) << "request " << i << " token " << t;
      EXPECT_EQ(a.logprob, b.logprob);
      ASSERT_EQ(a.top_logprobs.size(), b.top_logprobs.size());
      for (size_t k = 0; k < a.top_logprobs.size(); ++k) EXPECT_EQ(a.top_logprobs[k].token, b.top_logprobs[k].token);
    }
  }
}

// What a GPU pass asks of the executor the scheduler hands it: whose GPU
// its experts are on and whether it groups routing there. The scheduler's
// own wrapper (for its timings) must answer as the executor does, or a GPU
// pass never runs the experts in place. Routing that stayed on the device is
// counted by the pass (AddRoutedCounts) into the step's figures.
class OnAGpu : public ExpertExecutor {
 public:
  explicit OnAGpu(ExpertExecutor* inner) : inner_(inner) {}
  absl::Status Execute(const ExpertBatch& b, float* out) override { return inner_->Execute(b, out); }
  int cuda_device() const override { return 3; }
  bool groups_on_device() const override { return true; }

 private:
  ExpertExecutor* inner_;
};

class AsksTheExecutor : public KeepsLogits {
 public:
  using KeepsLogits::KeepsLogits;
  absl::Status Forward(absl::Span<const ForwardItem> items, KvCache* cache, ExpertExecutor* experts,
                       std::vector<float>* logits) override {
    seen_device = experts->cuda_device();
    seen_grouping = experts->groups_on_device();
    return KeepsLogits::Forward(items, cache, experts, logits);
  }
  void AddRoutedCounts(std::vector<int64_t>* routed) const override {
    if (routed->size() < 2) routed->resize(2, 0);
    (*routed)[1] += 1000;  // as if layer 0's expert 1 took 1000 routes on the device
  }
  int seen_device = -1;
  bool seen_grouping = false;
};

TEST(SchedulerTest, APassSeesTheExecutorsGpuAndCountsItsRoutes) {
  Loaded l = Load("tests/fixtures/mixtral", nullptr);
  AsksTheExecutor pass(l.model.get());
  KvCache cache(l.config.num_layers, pass.kv_k_width(), pass.kv_v_width(), 4, 64);
  LocalExpertExecutor local(&l.weights->experts, nullptr);
  OnAGpu experts(&local);
  Scheduler sched(&pass, &cache, &experts, {});
  GenerateParams p;
  p.sampling.temperature = 0;
  p.max_new_tokens = 1;
  ASSERT_TRUE(sched.Add({1, 2, 3}, p, [](const StepEvent&) {}).ok());
  ASSERT_TRUE(sched.Step().ok());
  EXPECT_EQ(pass.seen_device, 3);
  EXPECT_TRUE(pass.seen_grouping);
  // The host saw this step's routing too (the CPU pass): 3 tokens, 2
  // experts each, every layer; plus what the pass counted.
  const std::vector<int64_t>& routed = sched.last_step().routed;
  int64_t total = 0;
  for (int64_t r : routed) total += r;
  EXPECT_EQ(total, 3 * l.config.num_experts_per_tok * l.config.num_layers + 1000);
}

// An executor whose experts are "away" (run here, in place): two lanes,
// not capturable, able to record and to settle. It counts what it is
// asked, so that a test sees what reached it through the scheduler.
class Away : public ExpertExecutor {
 public:
  explicit Away(ExpertExecutor* inner) : inner_(inner) {}
  absl::Status Execute(const ExpertBatch& b, float* out) override {
    ++executes;
    return inner_->Execute(b, out);
  }
  bool capturable() const override { return false; }
  int lanes() const override { return 2; }
  absl::Status Start(const ExpertBatch& b, float* out, int lane) override {
    ++starts[lane];
    return inner_->Execute(b, out);
  }
  absl::Status Finish(int lane) override {
    ++finishes[lane];
    return absl::OkStatus();
  }
  absl::Status Settle() override {
    ++settles;
    return absl::OkStatus();
  }
  bool replays() const override { return true; }
  absl::Status BeginRecording() override {
    ++recordings;
    return absl::OkStatus();
  }
  absl::Status EndRecording(bool keep, int64_t* id) override {
    *id = 7;
    return absl::OkStatus();
  }
  absl::Status Replay(int64_t id, const std::function<absl::Status()>& launch) override {
    replayed = id;
    return launch();
  }
  int executes = 0, starts[2] = {0, 0}, finishes[2] = {0, 0}, settles = 0, recordings = 0;
  int64_t replayed = -1;

 private:
  ExpertExecutor* inner_;
};

// A pass that asks everything a GPU pass asks of its executor, and records
// and replays a step as a GPU pass does with experts away.
class AsksForAll : public KeepsLogits {
 public:
  using KeepsLogits::KeepsLogits;
  absl::Status Forward(absl::Span<const ForwardItem> items, KvCache* cache, ExpertExecutor* experts,
                       std::vector<float>* logits) override {
    seen_capturable = experts->capturable();
    seen_replays = experts->replays();
    seen_lanes = experts->lanes();
    int64_t id = -1;
    if (!experts->BeginRecording().ok() || !experts->EndRecording(true, &id).ok()) return absl::InternalError("rec");
    bool launched = false;
    if (!experts->Replay(id, [&] {
          launched = true;
          return absl::OkStatus();
        }).ok() ||
        !launched) {
      return absl::InternalError("replay");
    }
    if (!experts->Settle().ok()) return absl::InternalError("settle");
    return KeepsLogits::Forward(items, cache, experts, logits);
  }
  bool seen_capturable = true, seen_replays = false;
  int seen_lanes = 0;
};

// The scheduler wraps its executor (for its figures): the wrapper must pass
// on everything the executor can do. Else a GPU pass takes experts away
// over cuda-ipc for in-process ones (and captures their messages' numbers
// into graphs that then replay stale rows), and the CPU pass never runs
// micro-batches in ping-pong.
TEST(SchedulerTest, TheExecutorsAbilitiesReachThePass) {
  Loaded l = Load("tests/fixtures/mixtral", nullptr);
  LocalExpertExecutor local(&l.weights->experts, nullptr);
  GenerateParams p;
  p.sampling.temperature = 0;
  p.max_new_tokens = 4;
  {
    AsksForAll pass(l.model.get());
    KvCache cache(l.config.num_layers, pass.kv_k_width(), pass.kv_v_width(), 4, 64);
    Away experts(&local);
    Scheduler sched(&pass, &cache, &experts, {});
    ASSERT_TRUE(sched.Add({1, 2, 3}, p, [](const StepEvent&) {}).ok());
    ASSERT_TRUE(sched.Step().ok());
    EXPECT_FALSE(pass.seen_capturable);
    EXPECT_TRUE(pass.seen_replays);
    EXPECT_EQ(pass.seen_lanes, 2);
    EXPECT_EQ(experts.recordings, 1);
    EXPECT_EQ(experts.replayed, 7);
    EXPECT_EQ(experts.settles, 1);
  }
  // The CPU pass in two micro-batches: both lanes used through the
  // scheduler, and the tokens of one batch.
  auto run = [&](int micro_batches, Away* experts) {
    auto pass = CpuForwardPass::Create(l.config, l.weights, nullptr, micro_batches);
    EXPECT_TRUE(pass.ok());
    KvCache cache(l.config.num_layers, (*pass)->kv_k_width(), (*pass)->kv_v_width(), 4, 64);
    Scheduler sched(pass->get(), &cache, experts, {});
    std::vector<std::vector<int>> tokens(3);
    for (int i = 0; i < 3; ++i) {
      EXPECT_TRUE(sched.Add({1 + i, 2, 3, 4 + i}, p, [&tokens, i](const StepEvent& ev) {
                         if (ev.error.ok() && ev.token >= 0) tokens[i].push_back(ev.token);
                       }).ok());
    }
    for (int steps = 0; !sched.idle() && steps < 100; ++steps) EXPECT_TRUE(sched.Step().ok());
    return tokens;
  };
  Away one(&local), two(&local);
  const auto want = run(1, &one), got = run(2, &two);
  EXPECT_EQ(got, want);
  EXPECT_GT(two.starts[1], 0) << "the second micro-batch's experts never went away";
  EXPECT_EQ(two.starts[0], two.finishes[0]);
  EXPECT_EQ(two.starts[1], two.finishes[1]);
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
  p.sampling.temperature = 0;  // greedy
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
