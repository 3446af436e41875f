// Every fixture model under tests/fixtures (made by tools/reference from
// Hugging Face transformers) must reproduce its reference: prompt logits and
// the logits of each greedy decode step within 1e-3, and the same greedy
// tokens, through the engine, chunked prefill, and a mixed batch. The
// quantized fixtures (GPTQ, AWQ, FP8 blocks) are held to the logits of
// their dequantized weights.
#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/engine/engine.h"
#include "core/experts/routing_recorder.h"
#include "core/quant/quantize.h"
#include "core/experts/local_expert_executor.h"
#include "core/engine/kv_cache.h"
#include "core/engine/cpu_forward_pass.h"
#include "core/model/safetensors.h"
#include "core/model/weights.h"
#include "core/tensor/thread_pool.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

constexpr float kTolerance = 1e-3f;
const char kFixtures[] = "tests/fixtures";

std::vector<std::string> FixtureNames() {
  std::vector<std::string> names;
  if (DIR* d = opendir(kFixtures)) {
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name;
      // A model fixture is a directory with a config.json.
      if (n[0] != '.' && access((std::string(kFixtures) + "/" + n + "/config.json").c_str(), R_OK) == 0) {
        names.push_back(n);
      }
    }
    closedir(d);
  }
  std::sort(names.begin(), names.end());
  return names;
}

struct Reference {
  std::vector<int> prompt, greedy;
  std::vector<float> prompt_logits, decode_logits;
};

Reference LoadReference(const std::string& dir) {
  auto f = SafetensorsFile::Open(dir + "/reference.safetensors");
  EXPECT_TRUE(f.ok()) << f.status();
  Reference r;
  auto ints = [&](const char* name) {
    const TensorInfo* t = (*f)->Find(name);
    const int64_t* p = static_cast<const int64_t*>(t->data);
    return std::vector<int>(p, p + t->NumElements());
  };
  auto floats = [&](const char* name) {
    const TensorInfo* t = (*f)->Find(name);
    const float* p = static_cast<const float*>(t->data);
    return std::vector<float>(p, p + t->NumElements());
  };
  r.prompt = ints("prompt_ids");
  r.greedy = ints("greedy_ids");
  r.prompt_logits = floats("prompt_logits");
  r.decode_logits = floats("decode_logits");
  return r;
}

float MaxAbsDiff(const float* a, const float* b, size_t n) {
  float m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

class FixtureTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::string Dir() const { return std::string(kFixtures) + "/" + GetParam(); }
};

TEST_P(FixtureTest, ScoreMatchesPromptLogits) {
  Reference ref = LoadReference(Dir());
  EngineOptions opt;
  opt.num_threads = 2;
  auto engine = Engine::Create(Dir(), opt);
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto logits = (*engine)->Score(ref.prompt);
  ASSERT_TRUE(logits.ok()) << logits.status();
  ASSERT_EQ(logits->size(), ref.prompt_logits.size());
  EXPECT_LT(MaxAbsDiff(logits->data(), ref.prompt_logits.data(), logits->size()), kTolerance);
}

TEST_P(FixtureTest, GreedyContinuationIsIdentical) {
  Reference ref = LoadReference(Dir());
  auto engine = Engine::Create(Dir(), EngineOptions{});
  ASSERT_TRUE(engine.ok()) << engine.status();
  GenerateParams p;
  p.sampling.temperature = 0;  // greedy
  p.max_new_tokens = static_cast<int>(ref.greedy.size());
  auto out = (*engine)->Generate(ref.prompt, p);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->tokens, ref.greedy);
}

// Drives the model step by step to compare each decode step's logits, with
// the prompt prefilled in chunks of 5 so chunk boundaries are exercised.
TEST_P(FixtureTest, DecodeLogitsMatchWithChunkedPrefill) {
  Reference ref = LoadReference(Dir());
  auto config = LoadModelConfig(Dir());
  ASSERT_TRUE(config.ok()) << config.status();
  auto ckpt = Checkpoint::Open(Dir());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto weights = LoadWeights(std::move(*ckpt), *config);
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto w = std::make_shared<const ModelWeights>(std::move(*weights));
  ThreadPool pool(2);
  auto model = CpuForwardPass::Create(*config, w, &pool);
  ASSERT_TRUE(model.ok()) << model.status();
  KvCache cache(config->num_layers, (*model)->kv_k_width(), (*model)->kv_v_width(), 4, 64);
  LocalExpertExecutor experts(&w->experts, &pool);
  const int vocab = config->vocab_size;

  KvSequence seq;
  std::vector<float> logits;
  for (size_t s = 0; s < ref.prompt.size(); s += 5) {
    size_t len = std::min<size_t>(5, ref.prompt.size() - s);
    ForwardItem item{&seq, absl::MakeConstSpan(ref.prompt).subspan(s, len), true};
    ASSERT_TRUE((*model)->Forward({&item, 1}, &cache, &experts, &logits).ok());
  }
  ASSERT_EQ(logits.size(), ref.prompt_logits.size());
  EXPECT_LT(MaxAbsDiff(logits.data(), ref.prompt_logits.data(), logits.size()), kTolerance);
  for (size_t i = 0; i + 1 < ref.greedy.size(); ++i) {
    logits.clear();
    ForwardItem item{&seq, absl::MakeConstSpan(&ref.greedy[i], 1), false};
    ASSERT_TRUE((*model)->Forward({&item, 1}, &cache, &experts, &logits).ok());
    ASSERT_EQ(logits.size(), static_cast<size_t>(vocab));
    EXPECT_LT(MaxAbsDiff(logits.data(), ref.decode_logits.data() + i * vocab, vocab), kTolerance)
        << "decode step " << i;
  }
}

// Two sequences at different positions in one step give the same logits as
// each alone (continuous batching must not mix their state).
TEST_P(FixtureTest, MixedBatchEqualsSeparateRuns) {
  Reference ref = LoadReference(Dir());
  auto config = LoadModelConfig(Dir());
  ASSERT_TRUE(config.ok());
  auto ckpt = Checkpoint::Open(Dir());
  ASSERT_TRUE(ckpt.ok());
  auto weights = LoadWeights(std::move(*ckpt), *config);
  ASSERT_TRUE(weights.ok());
  auto w = std::make_shared<const ModelWeights>(std::move(*weights));
  auto model = CpuForwardPass::Create(*config, w, nullptr);
  ASSERT_TRUE(model.ok());
  KvCache cache(config->num_layers, (*model)->kv_k_width(), (*model)->kv_v_width(), 4, 64);
  LocalExpertExecutor experts(&w->experts, nullptr);
  const int vocab = config->vocab_size;

  // Sequence A: prefilled prompt, now decoding its first greedy token.
  KvSequence a, b;
  std::vector<float> logits;
  ForwardItem pre{&a, ref.prompt, false};
  ASSERT_TRUE((*model)->Forward({&pre, 1}, &cache, &experts, &logits).ok());
  // In one step: A decodes greedy[0] while B prefills the prompt.
  logits.clear();
  ForwardItem step[2] = {{&a, absl::MakeConstSpan(&ref.greedy[0], 1), false},
                         {&b, ref.prompt, true}};
  ASSERT_TRUE((*model)->Forward(step, &cache, &experts, &logits).ok());
  ASSERT_EQ(logits.size(), (1 + ref.prompt.size()) * vocab);
  EXPECT_LT(MaxAbsDiff(logits.data(), ref.decode_logits.data(), vocab), kTolerance);
  EXPECT_LT(MaxAbsDiff(logits.data() + vocab, ref.prompt_logits.data(), ref.prompt_logits.size()),
            kTolerance);
}

// An engine whose routed experts run in process behind a RoutingRecorder,
// the experts loaded here alike (with bf16 inputs or not).
struct Recorded {
  std::shared_ptr<const ModelWeights> experts;
  RoutingRecorder* recorder = nullptr;
  std::unique_ptr<Engine> engine;
};

Recorded MakeRecorded(const std::string& dir, bool bf16_inputs) {
  Recorded r;
  auto config = LoadModelConfig(dir);
  auto ckpt = Checkpoint::Open(dir);
  EXPECT_TRUE(config.ok() && ckpt.ok());
  if (!config.ok() || !ckpt.ok()) return r;
  WeightLoadOptions load;
  load.load_dense = false;
  load.bf16_inputs = bf16_inputs;
  auto w = LoadWeights(std::move(*ckpt), *config, load);
  EXPECT_TRUE(w.ok()) << w.status();
  if (!w.ok()) return r;
  r.experts = std::make_shared<const ModelWeights>(std::move(*w));
  auto recorder =
      std::make_unique<RoutingRecorder>(std::make_unique<LocalExpertExecutor>(&r.experts->experts, nullptr));
  r.recorder = recorder.get();
  EngineOptions o;
  o.num_threads = 2;
  o.bf16_inputs = bf16_inputs;
  auto e = Engine::Create(dir, o, std::move(recorder));
  EXPECT_TRUE(e.ok()) << e.status();
  if (e.ok()) r.engine = std::move(*e);
  return r;
}

// --bf16-inputs: every BF16 projection but the gates multiplies inputs
// rounded to bf16, as a GPU does. Each input moves by at most 2^-9 of
// itself, so the logits move by a small fraction of their RMS (at most
// 1.2% on these fixtures, DeepSeek-V3's, measured 2026-12-08; the demo
// model's held-out perplexity: docs/PERFORMANCE.md) at every position
// before the first token that a gate with two experts nearly level routes
// apart (after one, as between the GPU and the CPU, later positions can
// move by anything). Such tokens are few (a broken kernel would part most);
// the logits do move (the rounding is in use); and the KV cache names its
// blocks apart.
constexpr double kBf16InputsRmsTolerance = 0.02;  // of the logits' RMS

TEST_P(FixtureTest, Bf16InputsStayNearTheReference) {
  Reference ref = LoadReference(Dir());
  Recorded exact = MakeRecorded(Dir(), false), bf16 = MakeRecorded(Dir(), true);
  ASSERT_TRUE(exact.engine && bf16.engine);
  auto want = exact.engine->Score(ref.prompt);
  auto got = bf16.engine->Score(ref.prompt);
  ASSERT_TRUE(want.ok() && got.ok());
  ASSERT_EQ(got->size(), ref.prompt_logits.size());
  const RoutingDiff routing =
      CompareRouting(exact.recorder->calls(), bf16.recorder->calls(), exact.engine->config().num_experts_per_tok);
  const size_t vocab = got->size() / ref.prompt.size();
  const size_t clean = routing.first_row < 0 ? ref.prompt.size() : static_cast<size_t>(routing.first_row);
  double diff = 0, norm = 0;
  for (size_t i = 0; i < clean * vocab; ++i) {
    diff += ((*got)[i] - ref.prompt_logits[i]) * ((*got)[i] - ref.prompt_logits[i]);
    norm += ref.prompt_logits[i] * ref.prompt_logits[i];
  }
  std::printf("%s: bf16 inputs move the logits by %.3f%% of their RMS over %zu of %zu positions; %zu of %zu "
              "token-layers routed apart\n",
              GetParam().c_str(), norm > 0 ? 100 * std::sqrt(diff / norm) : 0.0, clean, ref.prompt.size(),
              routing.differing, routing.tokens);
  EXPECT_GE(clean, 1u) << "the first position routed apart";
  EXPECT_LT(std::sqrt(diff / std::max(norm, 1e-30)), kBf16InputsRmsTolerance);
  EXPECT_LE(routing.differing * 10, routing.tokens);
  EXPECT_NE(*got, *want) << "the bf16 inputs were not used";
  EXPECT_NE(bf16.engine->cache_root(), exact.engine->cache_root());
}

INSTANTIATE_TEST_SUITE_P(AllFixtures, FixtureTest, ::testing::ValuesIn(FixtureNames()),
                         [](const auto& info) { return info.param; });

// Int4 checkpoints as published (GPTQ, AWQ, act-order GPTQ) served by int8
// inputs (--quantize int4:q8): their own int4 weights, every expert input
// rounded to int8 per 32 columns. On these tiny random models (hidden 64,
// heavy-tailed activations between the experts' two products) that moves
// the logits by about 2.6% of their RMS (measured 2026-12-08), far more
// than the fixtures' 1e-3 but well within the stated bound here (the demo
// model's held-out perplexity moves by 0.01%: docs/PERFORMANCE.md); and it
// does move them, so the int8 inputs are in use.
constexpr double kInt8InputsRmsTolerance = 0.05;  // of the logits' RMS

TEST(QuantizedCheckpointTest, Int4CheckpointsTakeInt8Inputs) {
  for (const std::string name : {"mixtral_gptq", "mixtral_awq", "qwen3_moe_gptq_actorder"}) {
    const std::string dir = std::string(kFixtures) + "/" + name;
    Reference ref = LoadReference(dir);
    EngineOptions exact_opt;
    exact_opt.num_threads = 2;
    EngineOptions q8_opt = exact_opt;
    q8_opt.quantize_experts = *ParseQuantSpec("int4:q8");
    auto exact = Engine::Create(dir, exact_opt);
    auto q8 = Engine::Create(dir, q8_opt);
    ASSERT_TRUE(exact.ok() && q8.ok()) << name << ": " << exact.status() << " " << q8.status();
    auto want = (*exact)->Score(ref.prompt);
    auto got = (*q8)->Score(ref.prompt);
    ASSERT_TRUE(want.ok() && got.ok()) << name;
    ASSERT_EQ(got->size(), ref.prompt_logits.size());
    double diff = 0, norm = 0;
    for (size_t i = 0; i < got->size(); ++i) {
      diff += ((*got)[i] - ref.prompt_logits[i]) * ((*got)[i] - ref.prompt_logits[i]);
      norm += ref.prompt_logits[i] * ref.prompt_logits[i];
    }
    EXPECT_LT(std::sqrt(diff / norm), kInt8InputsRmsTolerance) << name;
    EXPECT_LT(MaxAbsDiff(want->data(), ref.prompt_logits.data(), want->size()), kTolerance) << name;
    EXPECT_NE(*got, *want) << name << ": the int8 inputs were not used";
  }
}

TEST(FixtureSetTest, CoversEveryArchitectureAndVariant) {
  std::vector<std::string> names = FixtureNames();
  for (const char* want : {"mixtral", "mixtral_sliding", "mixtral_llama3", "qwen2_moe",
                           "qwen2_moe_linear", "qwen2_moe_sliding", "qwen3_moe", "qwen3_moe_yarn",
                           "olmoe", "olmoe_dynamic", "deepseek_v3", "deepseek_v3_nolora", "mixtral_gptq",
                           "mixtral_awq", "qwen3_moe_gptq_actorder", "deepseek_v3_fp8"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), want), names.end()) << want;
  }
}

}  // namespace
}  // namespace moemesh
