#include "core/engine/engine.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>

#include "core/common/file_util.h"
#include "core/experts/local_expert_executor.h"
#include "core/engine/kv_cache.h"
#include "core/engine/cpu_forward_pass.h"
#include "core/model/safetensors.h"
#include "core/model/weights.h"
#include "core/quant/quantize.h"
#include "core/tensor/rel_error.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

const char kMixtral[] = "tests/fixtures/mixtral";
const std::vector<int> kPrompt = {5, 17, 300, 42, 7, 99};

std::unique_ptr<Engine> MakeEngine(const std::string& dir, EngineOptions opt = {}) {
  auto e = Engine::Create(dir, opt);
  EXPECT_TRUE(e.ok()) << e.status();
  return e.ok() ? std::move(*e) : nullptr;
}

TEST(EngineTest, BadRequestsGetClearErrors) {
  auto e = MakeEngine(kMixtral);
  GenerateParams p;
  p.sampling.temperature = 0;  // greedy
  EXPECT_EQ(e->Generate({}, p).status().code(), absl::StatusCode::kInvalidArgument);
  auto st = e->Generate({1, 512}, p).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("512"), std::string::npos);
  p.max_new_tokens = 0;
  EXPECT_NE(e->Generate(kPrompt, p).status().message().find("max_new_tokens"), std::string::npos);
  p = {};
  p.sampling.top_p = 5;
  EXPECT_NE(e->Generate(kPrompt, p).status().message().find("top_p"), std::string::npos);
  EXPECT_EQ(e->Score({-1}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(EngineTest, CreateFailsClearlyOnBadModelDirOrOptions) {
  auto missing = Engine::Create("/nonexistent/model", {});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EngineOptions opt;
  opt.num_threads = 0;
  EXPECT_EQ(Engine::Create(kMixtral, opt).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(EngineTest, KvCacheExhaustionIsResourceExhaustedAndRecoverable) {
  EngineOptions opt;
  opt.kv_cache_tokens = 16;
  opt.kv_block_size = 4;
  auto e = MakeEngine(kMixtral, opt);
  GenerateParams p;
  p.sampling.temperature = 0;  // greedy
  p.max_new_tokens = 30;
  auto st = e->Generate(kPrompt, p).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  // The failed request released its blocks: a short one still runs.
  p.max_new_tokens = 4;
  EXPECT_TRUE(e->Generate(kPrompt, p).ok());
}

TEST(EngineTest, StopTokensAndEos) {
  auto e = MakeEngine(kMixtral);
  GenerateParams p;
  p.sampling.temperature = 0;  // greedy
  p.max_new_tokens = 8;
  auto full = e->Generate(kPrompt, p);
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(full->tokens.size(), 8u);
  EXPECT_EQ(full->finish_reason, FinishReason::kLength);
  p.stop_token_ids = {full->tokens[2]};
  auto stopped = e->Generate(kPrompt, p);
  ASSERT_TRUE(stopped.ok());
  EXPECT_EQ(stopped->finish_reason, FinishReason::kStop);
  // Stops at the first occurrence, which is included.
  auto first = std::find(full->tokens.begin(), full->tokens.end(), full->tokens[2]);
  EXPECT_EQ(stopped->tokens, std::vector<int>(full->tokens.begin(), first + 1));
}

TEST(EngineTest, SeededSamplingIsReproducible) {
  EngineOptions two;
  two.num_threads = 2;
  auto e = MakeEngine(kMixtral, two);
  GenerateParams p;
  p.max_new_tokens = 12;
  p.sampling.temperature = 1.0f;
  p.sampling.top_p = 0.9f;
  p.sampling.seed = 1234;
  auto a = e->Generate(kPrompt, p);
  auto b = e->Generate(kPrompt, p);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->tokens, b->tokens);
  p.sampling.seed = 99;
  auto c = e->Generate(kPrompt, p);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(a->tokens, c->tokens);
}

TEST(EngineTest, ChunkedPrefillAndThreadsDoNotChangeResults) {
  EngineOptions one;
  auto a = MakeEngine("tests/fixtures/deepseek_v3", one);
  EngineOptions chunked;
  chunked.prefill_chunk = 2;
  chunked.num_threads = 2;
  auto b = MakeEngine("tests/fixtures/deepseek_v3", chunked);
  auto la = a->Score(kPrompt), lb = b->Score(kPrompt);
  ASSERT_TRUE(la.ok() && lb.ok());
  ASSERT_EQ(la->size(), lb->size());
  for (size_t i = 0; i < la->size(); ++i) ASSERT_NEAR((*la)[i], (*lb)[i], 1e-4);
}

// Gating extensions: dynamic k with k_min = k_max = top_k and norm is the
// stock router; a low temperature changes the logits.
TEST(EngineTest, GatingExtensionsAreOffByDefaultAndTakeEffectWhenSet) {
  auto stock = MakeEngine("tests/fixtures/qwen3_moe");
  EngineOptions same;
  same.gating.dynamic_k_min = 2;
  same.gating.dynamic_k_max = 2;
  same.gating.dynamic_k_p = 0.5;
  auto fixed_k = MakeEngine("tests/fixtures/qwen3_moe", same);
  EngineOptions hot;
  hot.gating.temperature = 0.1;
  auto tempered = MakeEngine("tests/fixtures/qwen3_moe", hot);
  EngineOptions dyn;
  dyn.gating.dynamic_k_min = 1;
  dyn.gating.dynamic_k_max = 4;
  dyn.gating.dynamic_k_p = 0.3;
  auto dynamic = MakeEngine("tests/fixtures/qwen3_moe", dyn);
  auto a = stock->Score(kPrompt), b = fixed_k->Score(kPrompt), c = tempered->Score(kPrompt),
       d = dynamic->Score(kPrompt);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok() && d.ok());
  float diff_b = 0, diff_c = 0, diff_d = 0;
  for (size_t i = 0; i < a->size(); ++i) {
    diff_b = std::max(diff_b, std::fabs((*a)[i] - (*b)[i]));
    diff_c = std::max(diff_c, std::fabs((*a)[i] - (*c)[i]));
    diff_d = std::max(diff_d, std::fabs((*a)[i] - (*d)[i]));
  }
  EXPECT_LT(diff_b, 1e-5);
  EXPECT_GT(diff_c, 1e-2);
  EXPECT_GT(diff_d, 1e-2);
  EngineOptions bad;
  bad.gating.dynamic_k_min = 3;
  bad.gating.dynamic_k_max = 2;
  bad.gating.dynamic_k_p = 0.5;
  EXPECT_EQ(Engine::Create("tests/fixtures/qwen3_moe", bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The seam: the model calls its ExpertExecutor once per MoE layer per step,
// and an executor failure surfaces as the step's error.
class CountingExecutor : public ExpertExecutor {
 public:
  explicit CountingExecutor(ExpertExecutor* inner) : inner_(inner) {}
  absl::Status Execute(const ExpertBatch& b, float* out) override {
    layers.push_back(b.layer);
    if (fail) return absl::UnavailableError("expert worker down");
    return inner_->Execute(b, out);
  }
  std::vector<int> layers;
  bool fail = false;

 private:
  ExpertExecutor* inner_;
};

TEST(EngineTest, ExpertExecutorSeam) {
  const std::string dir = "tests/fixtures/deepseek_v3";  // layer 0 is dense
  auto config = LoadModelConfig(dir);
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(config.ok() && ckpt.ok());
  auto w = LoadWeights(std::move(*ckpt), *config);
  ASSERT_TRUE(w.ok());
  auto weights = std::make_shared<const ModelWeights>(std::move(*w));
  auto model = CpuForwardPass::Create(*config, weights, nullptr);
  ASSERT_TRUE(model.ok());
  KvCache cache(config->num_layers, (*model)->kv_k_width(), (*model)->kv_v_width(), 16, 4);
  LocalExpertExecutor local(&weights->experts, nullptr);
  CountingExecutor counting(&local);
  KvSequence seq;
  std::vector<float> logits;
  ForwardItem item{&seq, kPrompt, false};
  ASSERT_TRUE((*model)->Forward({&item, 1}, &cache, &counting, &logits).ok());
  EXPECT_EQ(counting.layers, (std::vector<int>{1, 2}));
  counting.fail = true;
  ForwardItem next{&seq, absl::MakeConstSpan(&kPrompt[0], 1), false};
  auto st = (*model)->Forward({&next, 1}, &cache, &counting, &logits);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(seq.length, static_cast<int>(kPrompt.size()));  // unchanged on failure
  // An executor lacking an expert says which.
  ExpertWeightsTable empty;
  LocalExpertExecutor none(&empty, nullptr);
  st = (*model)->Forward({&next, 1}, &cache, &none, &logits);
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(st.message().find("layer 1"), std::string::npos);
}

// The KV tiers' copies of cache blocks: several blocks read out and written
// into others come back whole, in order; bytes of another size are refused
// before anything is written.
TEST(EngineTest, KvBlocksCopyOutAndInWhole) {
  const std::string dir = "tests/fixtures/deepseek_v3";
  auto config = LoadModelConfig(dir);
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(config.ok() && ckpt.ok());
  auto w = LoadWeights(std::move(*ckpt), *config);
  ASSERT_TRUE(w.ok());
  auto model = CpuForwardPass::Create(*config, std::make_shared<const ModelWeights>(std::move(*w)), nullptr);
  ASSERT_TRUE(model.ok());
  KvCache cache(config->num_layers, (*model)->kv_k_width(), (*model)->kv_v_width(), 4, 6);
  const size_t layer_floats = 4 * static_cast<size_t>(cache.row_width());
  for (int b = 0; b < 6; ++b) {
    for (int l = 0; l < config->num_layers; ++l) {
      for (size_t i = 0; i < layer_floats; ++i) cache.BlockRows(b, l)[i] = b * 1000 + l * 100 + static_cast<float>(i);
    }
  }
  std::vector<std::string> out;
  ASSERT_TRUE((*model)->ReadKvBlocks(cache, {2, 0}, &out).ok());
  ASSERT_EQ(out.size(), 2u);
  ASSERT_TRUE((*model)->WriteKvBlocks(&cache, {5, 4}, {out[0], out[1]}).ok());
  for (int l = 0; l < config->num_layers; ++l) {
    for (size_t i = 0; i < layer_floats; ++i) {
      ASSERT_EQ(cache.BlockRows(5, l)[i], cache.BlockRows(2, l)[i]);
      ASSERT_EQ(cache.BlockRows(4, l)[i], cache.BlockRows(0, l)[i]);
    }
  }
  const std::string short_block = out[1].substr(1);
  const float before = cache.BlockRows(3, 0)[0];
  EXPECT_EQ((*model)->WriteKvBlocks(&cache, {3, 1}, {out[0], short_block}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.BlockRows(3, 0)[0], before);  // nothing written
  EXPECT_EQ((*model)->WriteKvBlocks(&cache, {3, 1}, {out[0]}).code(), absl::StatusCode::kInvalidArgument);
}

// Checkpoints written before transformers 5 spell rope as rope_scaling +
// rope_theta; they must give the same logits.
TEST(EngineTest, LegacyRopeSpellingGivesSameLogits) {
  const std::string src = "tests/fixtures/qwen3_moe_yarn";
  const std::string dst = JoinPath(::testing::TempDir(), "qwen3_moe_yarn_legacy");
  ASSERT_EQ(std::system(("rm -rf " + dst + " && cp -r " + src + " " + dst).c_str()), 0);
  auto text = ReadFile(dst + "/config.json");
  ASSERT_TRUE(text.ok());
  nlohmann::json j = nlohmann::json::parse(*text);
  nlohmann::json rope = j["rope_parameters"];
  j.erase("rope_parameters");
  j["rope_theta"] = rope["rope_theta"];
  rope.erase("rope_theta");
  rope["type"] = rope["rope_type"];
  rope.erase("rope_type");
  j["rope_scaling"] = rope;
  ASSERT_TRUE(WriteFileAtomically(dst + "/config.json", j.dump()).ok());
  auto a = MakeEngine(src)->Score(kPrompt);
  auto b = MakeEngine(dst)->Score(kPrompt);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
}

// Experts quantized at load: the logits stay near the stored weights' (int8
// nearer than int4), moving from them all the same, for each architecture
// (partial int4 groups where a fixture's widths are not multiples of 32).
TEST(EngineTest, QuantizedExpertsStayNearTheStoredOnes) {
  for (const char* dir : {"tests/fixtures/mixtral", "tests/fixtures/qwen2_moe", "tests/fixtures/deepseek_v3",
                          "models/fortune-moe"}) {
    auto stored = MakeEngine(dir)->Score(kPrompt);
    ASSERT_TRUE(stored.ok()) << stored.status();
    std::map<std::string, double> err;
    for (const char* spec : {"int8", "int4:32", "int4:32:asym", "int4:128"}) {
      EngineOptions o;
      o.quantize_experts = *ParseQuantSpec(spec);
      auto e = MakeEngine(dir, o);
      ASSERT_NE(e, nullptr) << dir << " " << spec;
      auto got = e->Score(kPrompt);
      ASSERT_TRUE(got.ok()) << got.status();
      err[spec] = RelError(*got, *stored);
      std::printf("%s, %s experts: logits within %.2e of the stored weights'\n", dir, spec, err[spec]);
      EXPECT_GT(err[spec], 0) << dir << " " << spec << ": quantizing changed nothing";
    }
    EXPECT_LT(err["int8"], 0.02) << dir;
    EXPECT_LT(err["int4:32:asym"], 0.25) << dir;
    EXPECT_LT(err["int8"], err["int4:32"]) << dir;
  }
}

// A pass that computes as the CPU's does but says it computes otherwise
// (as a GPU pass says "gpu").
class TaggedPass : public ForwardPass {
 public:
  explicit TaggedPass(std::unique_ptr<ForwardPass> inner) : inner_(std::move(inner)) {}
  const ModelConfig& config() const override { return inner_->config(); }
  std::string ResultsTag() const override { return "test"; }
  absl::Status Forward(absl::Span<const ForwardItem> items, KvCache* cache, ExpertExecutor* experts,
                       std::vector<float>* logits) override {
    return inner_->Forward(items, cache, experts, logits);
  }

 private:
  std::unique_ptr<ForwardPass> inner_;
};

// A pass that computes otherwise names its KV blocks apart, and the cache's
// start-up line says what names them.
TEST(EngineTest, APassThatComputesOtherwiseNamesItsBlocksApart) {
  const std::string dir = "tests/fixtures/mixtral";
  auto plain = Engine::Create(dir, EngineOptions{});
  ASSERT_TRUE(plain.ok()) << plain.status();
  EngineOptions o;
  o.forward_pass = [](const ModelConfig& c, std::shared_ptr<const ModelWeights> w, int, int)
      -> absl::StatusOr<std::unique_ptr<ForwardPass>> {
    auto inner = CpuForwardPass::Create(c, std::move(w), nullptr);
    if (!inner.ok()) return inner.status();
    return std::unique_ptr<ForwardPass>(new TaggedPass(std::move(*inner)));
  };
  auto tagged = Engine::Create(dir, o);
  ASSERT_TRUE(tagged.ok()) << tagged.status();
  EXPECT_NE((*tagged)->cache_root(), (*plain)->cache_root());
  EXPECT_NE((*tagged)->DescribeCache().find("; blocks named for pass=test"), std::string::npos)
      << (*tagged)->DescribeCache();
  EXPECT_EQ((*plain)->DescribeCache().find("blocks named for"), std::string::npos) << (*plain)->DescribeCache();
  // The same tokens either way: only the names differ.
  auto a = (*plain)->Score({1, 2, 3}), b = (*tagged)->Score({1, 2, 3});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
}

}  // namespace
}  // namespace moemesh
