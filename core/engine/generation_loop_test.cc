#include "core/engine/generation_loop.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <map>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "core/engine/engine.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

constexpr char kModel[] = "tests/fixtures/qwen3_moe";

std::unique_ptr<GenerationLoop> NewLoop(Engine* engine, int max_waiting = 256) {
  return std::make_unique<GenerationLoop>(engine->NewScheduler(64, 2048), max_waiting);
}

// Collects one request's events; waits for the last.
struct Sink {
  absl::Mutex mu;
  std::vector<int> tokens;
  absl::Status error;
  bool finished = false;
  std::function<void(const StepEvent&)> Callback() {
    return [this](const StepEvent& ev) {
      absl::MutexLock l(&mu);
      if (ev.token >= 0) tokens.push_back(ev.token);
      if (ev.finished) {
        finished = true;
        error = ev.error;
      }
    };
  }
  void AwaitFinished() {
    absl::MutexLock l(&mu);
    mu.Await(absl::Condition(&finished));
  }
  size_t count() {
    absl::MutexLock l(&mu);
    return tokens.size();
  }
};

// Requests submitted from many threads at once give the tokens of the same
// requests run alone.
TEST(GenerationLoopTest, ConcurrentSubmissionsEqualRunsAlone) {
  auto engine = Engine::Create(kModel, {});
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto alone = Engine::Create(kModel, {});
  auto loop = NewLoop(engine->get());
  constexpr int kN = 24;
  std::vector<std::vector<int>> prompts;
  std::vector<GenerateParams> params;
  for (int i = 0; i < kN; ++i) {
    std::vector<int> p;
    for (int k = 0; k < 3 + i % 7; ++k) p.push_back((i * 37 + k * 11) % 200 + 1);
    prompts.push_back(p);
    GenerateParams g;
    g.max_new_tokens = 4 + i % 9;
    g.sampling.temperature = 0;  // greedy, half of them
    if (i % 2) {
      g.sampling.temperature = 0.8f;
      g.sampling.seed = 100 + i;
    }
    params.push_back(g);
  }
  std::vector<Sink> sinks(kN);
  std::vector<std::thread> threads;
  for (int i = 0; i < kN; ++i) {
    threads.emplace_back([&, i] { ASSERT_TRUE(loop->Submit(prompts[i], params[i], sinks[i].Callback()).ok()); });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kN; ++i) {
    sinks[i].AwaitFinished();
    ASSERT_TRUE(sinks[i].error.ok()) << sinks[i].error;
    auto want = (*alone)->Generate(prompts[i], params[i]);
    ASSERT_TRUE(want.ok());
    EXPECT_EQ(sinks[i].tokens, want->tokens) << "request " << i;
  }
  // The loop publishes its stats after the step that delivered the events.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (loop->stats().running != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  GenerationLoop::Stats s = loop->stats();
  EXPECT_EQ(s.running, 0);
  EXPECT_EQ(s.kv_blocks_used, 0);
  EXPECT_EQ(s.submitted, kN);
}

// Cancelled requests leave the batch and free their cache within a step,
// and the step observer hears of it even when nothing else runs.
TEST(GenerationLoopTest, CancelFreesTheCache) {
  EngineOptions o;
  o.kv_block_size = 512;  // one block per request all along, so usage is exact
  auto engine = Engine::Create(kModel, o);
  ASSERT_TRUE(engine.ok());
  absl::Mutex observed_mu;
  GenerationLoop::Stats observed;
  auto loop = std::make_unique<GenerationLoop>(
      (*engine)->NewScheduler(64, 2048), 256, [&](const StepStats&, const GenerationLoop::Stats& s) {
        absl::MutexLock l(&observed_mu);
        observed = s;
      });
  GenerateParams g;
  g.sampling.temperature = 0;  // greedy
  g.max_new_tokens = 400;
  g.ignore_eos = true;
  std::vector<Sink> sinks(8);
  std::vector<int64_t> ids;
  for (int i = 0; i < 8; ++i) {
    auto id = loop->Submit({1, 2, 3, 4 + i}, g, sinks[i].Callback());
    ASSERT_TRUE(id.ok());
    ids.push_back(*id);
  }
  for (auto& s : sinks) {
    while (s.count() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const int used_before = loop->stats().kv_blocks_used;
  EXPECT_EQ(loop->stats().running, 8);
  for (int i = 0; i < 8; i += 2) loop->Cancel(ids[i]);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (loop->stats().running != 4 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  GenerationLoop::Stats s = loop->stats();
  EXPECT_EQ(s.running, 4);
  EXPECT_EQ(used_before, 8);
  EXPECT_EQ(s.kv_blocks_used, 4);
  std::vector<size_t> at_cancel;
  for (auto& k : sinks) at_cancel.push_back(k.count());
  for (int i = 1; i < 8; i += 2) loop->Cancel(ids[i]);
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (loop->stats().running != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(loop->stats().kv_blocks_used, 0);
  // The last thing the observer saw is the empty batch, not the last pass.
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (;;) {
    {
      absl::MutexLock l(&observed_mu);
      if ((observed.running == 0 && observed.kv_blocks_used == 0) || std::chrono::steady_clock::now() > deadline) {
        EXPECT_EQ(observed.running, 0);
        EXPECT_EQ(observed.kv_blocks_used, 0);
        break;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  // A cancelled request may see the step that was running, no more.
  for (int i = 0; i < 8; i += 2) EXPECT_LE(sinks[i].count(), at_cancel[i] + 1);
  for (auto& k : sinks) EXPECT_FALSE(k.finished);
}

TEST(GenerationLoopTest, RejectsBadRequestsAtOnce) {
  auto engine = Engine::Create(kModel, {});
  ASSERT_TRUE(engine.ok());
  auto loop = NewLoop(engine->get(), /*max_waiting=*/2);
  GenerateParams g;
  g.sampling.temperature = 0;  // greedy
  EXPECT_EQ(loop->Submit({}, g, [](const StepEvent&) {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(loop->Submit({1 << 30}, g, [](const StepEvent&) {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  g.logprobs = 21;
  EXPECT_EQ(loop->Submit({1}, g, [](const StepEvent&) {}).status().code(), absl::StatusCode::kInvalidArgument);
  g.logprobs = 0;
  g.max_new_tokens = 1 << 24;  // more than the whole KV cache
  EXPECT_EQ(loop->Submit({1}, g, [](const StepEvent&) {}).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(GenerationLoopTest, BoundsTheWaitingQueue) {
  EngineOptions o;
  o.kv_cache_tokens = 64;  // room for one request at a time
  o.kv_block_size = 16;
  auto engine = Engine::Create(kModel, o);
  ASSERT_TRUE(engine.ok());
  auto loop = NewLoop(engine->get(), /*max_waiting=*/2);
  GenerateParams g;
  g.sampling.temperature = 0;  // greedy
  g.max_new_tokens = 60;
  g.ignore_eos = true;
  std::vector<Sink> sinks(3);
  // The first request's second event holds the loop thread (its first step
  // has been published: it runs, nothing waits) until the queue has been
  // filled, so the test cannot lose a race against the loop on a slow machine.
  absl::Notification held, release;
  auto first = sinks[0].Callback();
  int events = 0;
  ASSERT_TRUE(loop->Submit({1, 2}, g, [&, first](const StepEvent& ev) {
                    if (++events == 2) {
                      held.Notify();
                      release.WaitForNotification();
                    }
                    first(ev);
                  }).ok());
  held.WaitForNotification();
  absl::Cleanup let_go = [&] { release.Notify(); };  // also when an assertion fails
  EXPECT_EQ(loop->stats().running, 1);
  EXPECT_EQ(loop->stats().waiting, 0);
  ASSERT_TRUE(loop->Submit({1, 2}, g, sinks[1].Callback()).ok());
  ASSERT_TRUE(loop->Submit({1, 2}, g, sinks[2].Callback()).ok());
  auto st = loop->Submit({1, 2}, g, [](const StepEvent&) {}).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  std::move(let_go).Invoke();
  for (auto& s : sinks) s.AwaitFinished();
  for (auto& s : sinks) EXPECT_EQ(s.count(), 60u);
}

TEST(GenerationLoopTest, ReportsLogprobsOfTheRawDistribution) {
  auto engine = Engine::Create(kModel, {});
  ASSERT_TRUE(engine.ok());
  std::vector<int> prompt = {5, 17, 300, 42};
  auto logits = (*engine)->Score(prompt);
  ASSERT_TRUE(logits.ok());
  const int vocab = (*engine)->config().vocab_size;
  const float* last = logits->data() + (prompt.size() - 1) * vocab;
  auto loop = NewLoop(engine->get());
  GenerateParams g;
  g.max_new_tokens = 1;
  g.logprobs = 5;
  g.sampling.temperature = 0.5f;  // logprobs are of the raw logits all the same
  g.sampling.seed = 3;
  absl::Notification done;
  StepEvent got;
  ASSERT_TRUE(loop->Submit(prompt, g, [&](const StepEvent& ev) {
                    got = ev;
                    done.Notify();
                  }).ok());
  done.WaitForNotification();
  double sum = 0;
  for (int i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(last[i]));
  const double lse = std::log(sum);
  ASSERT_EQ(got.top_logprobs.size(), 5u);
  EXPECT_NEAR(got.logprob, last[got.token] - lse, 1e-4);
  int best = static_cast<int>(std::max_element(last, last + vocab) - last);
  EXPECT_EQ(got.top_logprobs[0].token, best);
  EXPECT_NEAR(got.top_logprobs[0].logprob, last[best] - lse, 1e-4);
  for (int i = 1; i < 5; ++i) EXPECT_LE(got.top_logprobs[i].logprob, got.top_logprobs[i - 1].logprob);
}

}  // namespace
}  // namespace moemesh
