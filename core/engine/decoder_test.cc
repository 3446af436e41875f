#include "core/engine/decoder.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/model/config.h"
#include "core/model/weights.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

// Records the operations the decoder asks for, in order, with the
// arguments that carry the architecture (which weights, how many rows of
// what width, which heads are rotated). Its numerics are the CPU and CUDA
// passes' business and are tested against transformers there.
class TraceOps : public DecoderOps {
 public:
  std::vector<std::string> trace;
  std::string fail_on;  // an operation's name that returns an error
  // Lanes log into one trace, each with its own prefix.
  std::vector<std::string>* log = &trace;
  std::string prefix;

  absl::StatusOr<float*> Scratch(int slot, size_t count) override {
    if (buffers_.size() <= static_cast<size_t>(slot)) buffers_.resize(slot + 1);
    if (buffers_[slot].size() < count) buffers_[slot].resize(count);
    return buffers_[slot].data();
  }
  absl::Status Linear(int layer, LayerLinear which, const float*, int n, float*) override {
    static const char* kNames[] = {"q", "k", "v", "o", "q_a", "q_b", "kv_a", "router", "shared_gate"};
    return Log("Linear", layer, absl::StrCat(kNames[static_cast<int>(which)], " n=", n));
  }
  absl::Status RmsNorm(int layer, LayerNorm which, const float*, int rows, int width, int stride, float eps,
                       float*) override {
    static const char* kNames[] = {"input", "post", "q", "k", "q_a", "kv_a"};
    return Log("RmsNorm", layer,
               absl::StrCat(kNames[static_cast<int>(which)], " ", rows, "x", width, "/", stride, " eps=", eps));
  }
  absl::Status Clamp(float*, size_t count, float limit) override {
    return Log("Clamp", -1, absl::StrCat(count, " ", limit));
  }
  absl::Status Sigmoid(float*, size_t count) override { return Log("Sigmoid", -1, absl::StrCat(count)); }
  absl::Status Add(float*, const float*, size_t count) override { return Log("Add", -1, absl::StrCat(count)); }
  absl::Status Rotate(float*, int heads, int token_stride, int head_stride) override {
    return Log("Rotate", -1, absl::StrCat(heads, "/", token_stride, "/", head_stride));
  }
  absl::Status WriteCache(int layer, const float*, const float* v) override {
    return Log("WriteCache", layer, v == nullptr ? "latent" : "k+v");
  }
  absl::Status Attend(int layer, const AttentionShape& s, const float*, float*) override {
    return Log("Attend", layer,
               absl::StrCat(s.num_heads, "/", s.num_kv_heads, "/", s.head_dim, "/", s.v_head_dim, " window=",
                            s.sliding_window));
  }
  absl::Status AbsorbQuery(int layer, const float*, float*) override { return Log("AbsorbQuery", layer, ""); }
  absl::Status ExpandLatent(int layer, const float*, float*) override { return Log("ExpandLatent", layer, ""); }
  absl::Status Ffn(int layer, LayerFfn which, const float*, const float* row_weight, float*) override {
    return Log("Ffn", layer,
               absl::StrCat(which == LayerFfn::kDense ? "dense" : "shared", row_weight ? " gated" : ""));
  }
  absl::Status StartExperts(int layer, const float*, const float*, ExpertExecutor*, float*) override {
    return Log("StartExperts", layer, "");
  }
  absl::Status FinishExperts(int layer, float*) override { return Log("FinishExperts", layer, ""); }

 protected:
  absl::Status Log(const std::string& op, int layer, const std::string& args) {
    log->push_back(absl::StrCat(prefix, op, layer >= 0 ? absl::StrCat("[", layer, "]") : "", args.empty() ? "" : " ",
                                 args));
    if (op == fail_on) return absl::UnavailableError(absl::StrCat(op, " failed"));
    return absl::OkStatus();
  }

 private:
  std::vector<std::vector<float>> buffers_;
};

const int kSomeData = 0;

Matrix Present(int rows = 1, int cols = 1) { return Matrix{DType::kF32, rows, cols, &kSomeData}; }

// A grouped-query model of `layers` MoE layers: 4 heads, 2 kv heads of 8,
// hidden 32, 4 experts.
ModelConfig GqaConfig(int layers) {
  ModelConfig c;
  c.vocab_size = 16;
  c.hidden_size = 32;
  c.num_layers = layers;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.rms_norm_eps = 1e-5;
  c.sliding_window.assign(layers, 0);
  c.num_experts = 4;
  c.num_experts_per_tok = 2;
  c.is_moe_layer.assign(layers, true);
  return c;
}

ModelWeights MoeWeights(const ModelConfig& c) {
  ModelWeights w;
  w.layers.resize(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    w.layers[l].moe = c.is_moe_layer[l];
    if (!w.layers[l].moe) w.layers[l].dense.gate = Present();
  }
  return w;
}

std::vector<std::string> Trace(const ModelConfig& c, const ModelWeights& w, int n, TraceOps* ops) {
  std::vector<float> hidden(static_cast<size_t>(n) * c.hidden_size);
  absl::Status st = RunDecoderLayers(c, w, n, ops, nullptr, hidden.data());
  EXPECT_TRUE(st.ok()) << st;
  return ops->trace;
}

TEST(DecoderTest, GroupedQueryMoeLayer) {
  ModelConfig c = GqaConfig(1);
  c.sliding_window = {4096};
  TraceOps ops;
  EXPECT_EQ(absl::StrJoin(Trace(c, MoeWeights(c), 3, &ops), "\n"),
            absl::StrJoin(
                {
                    "RmsNorm[0] input 3x32/32 eps=1e-05",
                    "Linear[0] q n=3",
                    "Linear[0] k n=3",
                    "Linear[0] v n=3",
                    "Rotate 4/32/8",
                    "Rotate 2/16/8",
                    "WriteCache[0] k+v",
                    "Attend[0] 4/2/8/8 window=4096",
                    "Linear[0] o n=3",
                    "Add 96",
                    "RmsNorm[0] post 3x32/32 eps=1e-05",
                    "Linear[0] router n=3",
                    "StartExperts[0]",
                    "FinishExperts[0]",
                    "Add 96",
                },
                "\n"));
}

TEST(DecoderTest, FullQkNormAndClipping) {  // OLMoE
  ModelConfig c = GqaConfig(1);
  c.qk_norm_full = true;
  c.clip_qkv = 8;
  TraceOps ops;
  std::vector<std::string> t = Trace(c, MoeWeights(c), 2, &ops);
  ASSERT_GE(t.size(), 10u);
  EXPECT_EQ(t[4], "RmsNorm[0] q 2x32/32 eps=1e-05");
  EXPECT_EQ(t[5], "RmsNorm[0] k 2x16/16 eps=1e-05");
  EXPECT_EQ(t[6], "Clamp 64 8");
  EXPECT_EQ(t[7], "Clamp 32 8");
  EXPECT_EQ(t[8], "Clamp 32 8");
  EXPECT_EQ(t[9], "Rotate 4/32/8");
}

TEST(DecoderTest, PerHeadQkNorm) {  // Qwen3-MoE
  ModelConfig c = GqaConfig(1);
  c.qk_norm_per_head = true;
  TraceOps ops;
  std::vector<std::string> t = Trace(c, MoeWeights(c), 2, &ops);
  ASSERT_GE(t.size(), 7u);
  EXPECT_EQ(t[4], "RmsNorm[0] q 8x8/8 eps=1e-05");
  EXPECT_EQ(t[5], "RmsNorm[0] k 4x8/8 eps=1e-05");
  EXPECT_EQ(t[6], "Rotate 4/32/8");
}

TEST(DecoderTest, GatedSharedExpertRunsWhileRoutedExpertsAreAway) {  // Qwen2-MoE
  ModelConfig c = GqaConfig(1);
  ModelWeights w = MoeWeights(c);
  w.layers[0].shared_expert.gate = Present();
  w.layers[0].shared_expert_gate = Present();
  TraceOps ops;
  std::vector<std::string> t = Trace(c, w, 2, &ops);
  std::vector<std::string> mlp(t.end() - 8, t.end());
  EXPECT_EQ(absl::StrJoin(mlp, "\n"), absl::StrJoin(
                                          {
                                              "Linear[0] router n=2",
                                              "StartExperts[0]",
                                              "Linear[0] shared_gate n=2",
                                              "Sigmoid 2",
                                              "Ffn[0] shared gated",
                                              "FinishExperts[0]",
                                              "Add 64",
                                              "Add 64",
                                          },
                                          "\n"));
}

TEST(DecoderTest, LatentAttentionAndDenseLayer) {  // DeepSeek-V3
  ModelConfig c = GqaConfig(2);
  c.mla = true;
  c.num_kv_heads = 4;
  c.q_lora_rank = 12;
  c.kv_lora_rank = 16;
  c.qk_nope_head_dim = 8;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 8;
  c.is_moe_layer = {false, true};
  TraceOps ops;
  std::vector<std::string> t = Trace(c, MoeWeights(c), 2, &ops);
  std::vector<std::string> first(t.begin(), t.begin() + 16);
  EXPECT_EQ(absl::StrJoin(first, "\n"), absl::StrJoin(
                                            {
                                                "RmsNorm[0] input 2x32/32 eps=1e-05",
                                                "Linear[0] q_a n=2",
                                                "RmsNorm[0] q_a 2x12/12 eps=1e-06",
                                                "Linear[0] q_b n=2",
                                                "Linear[0] kv_a n=2",
                                                "RmsNorm[0] kv_a 2x16/20 eps=1e-06",
                                                "Rotate 1/20/0",
                                                "Rotate 4/48/12",
                                                "WriteCache[0] latent",
                                                "AbsorbQuery[0]",
                                                "Attend[0] 4/1/20/16 window=0",
                                                "ExpandLatent[0]",
                                                "Linear[0] o n=2",
                                                "Add 64",
                                                "RmsNorm[0] post 2x32/32 eps=1e-05",
                                                "Ffn[0] dense",
                                            },
                                            "\n"));
  EXPECT_EQ(t.back(), "Add 64");
  EXPECT_EQ(t[t.size() - 2], "FinishExperts[1]");
}

// A backend that fuses each residual with the norm after it sees every
// residual but the last through AddRmsNorm, with the next norm's layer and
// weights; the first layer's input norm stands alone.
TEST(DecoderTest, ResidualsGoWithTheNormAfterThem) {
  class FusingOps : public TraceOps {
   public:
    absl::Status AddRmsNorm(int layer, LayerNorm which, float*, const float*, int rows, int width, float eps,
                            float*) override {
      return Log("AddRmsNorm", layer,
                 absl::StrCat(which == LayerNorm::kInput ? "input " : "post ", rows, "x", width, " eps=", eps));
    }
  };
  ModelConfig c = GqaConfig(2);
  FusingOps ops;
  std::vector<std::string> t = Trace(c, MoeWeights(c), 3, &ops);
  std::vector<std::string> norms;
  for (const std::string& op : t) {
    if (absl::StrContains(op, "Norm") || absl::StartsWith(op, "Add")) norms.push_back(op);
  }
  EXPECT_EQ(absl::StrJoin(norms, "\n"), absl::StrJoin(
                                            {
                                                "RmsNorm[0] input 3x32/32 eps=1e-05",
                                                "AddRmsNorm[0] post 3x32 eps=1e-05",
                                                "AddRmsNorm[1] input 3x32 eps=1e-05",
                                                "AddRmsNorm[1] post 3x32 eps=1e-05",
                                                "Add 96",
                                            },
                                            "\n"));
}

TEST(DecoderTest, PlainQueryProjectionWithoutQLora) {
  ModelConfig c = GqaConfig(1);
  c.mla = true;
  c.kv_lora_rank = 16;
  c.qk_nope_head_dim = 8;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 8;
  TraceOps ops;
  std::vector<std::string> t = Trace(c, MoeWeights(c), 1, &ops);
  ASSERT_GE(t.size(), 3u);
  EXPECT_EQ(t[1], "Linear[0] q n=1");
  EXPECT_EQ(t[2], "Linear[0] kv_a n=1");
}

TEST(DecoderTest, AnOperationsErrorStopsTheStep) {
  ModelConfig c = GqaConfig(2);
  TraceOps ops;
  ops.fail_on = "StartExperts";
  std::vector<float> hidden(c.hidden_size);
  absl::Status st = RunDecoderLayers(c, MoeWeights(c), 1, &ops, nullptr, hidden.data());
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ops.trace.back(), "StartExperts[0]");
}

// Two lanes in ping-pong: each sees what one lane alone would, and a lane's
// attention of a layer runs while the other lane's experts are away.
TEST(DecoderTest, LanesPingPongAroundTheirExperts) {
  ModelConfig c = GqaConfig(2);
  ModelWeights w = MoeWeights(c);
  TraceOps alone;
  const std::vector<std::string> one = Trace(c, w, 3, &alone);

  std::vector<std::string> both;
  TraceOps a, b;
  a.log = b.log = &both;
  a.prefix = "A:";
  b.prefix = "B:";
  std::vector<float> ha(3 * c.hidden_size), hb(3 * c.hidden_size);
  const DecoderLane lanes[] = {{3, &a, ha.data(), 0}, {3, &b, hb.data(), 1}};
  ASSERT_TRUE(RunDecoderLanes(c, w, lanes, nullptr).ok());
  std::vector<std::string> only_a, only_b;
  for (const std::string& op : both) (absl::StartsWith(op, "A:") ? only_a : only_b).push_back(op.substr(2));
  EXPECT_EQ(only_a, one);
  EXPECT_EQ(only_b, one);
  auto at = [&](const std::string& op) { return std::find(both.begin(), both.end(), op) - both.begin(); };
  // A's experts of layer 0 are away during B's attention of layer 0; B's
  // during A's attention of layer 1.
  EXPECT_LT(at("A:StartExperts[0]"), at("B:Attend[0] 4/2/8/8 window=0"));
  EXPECT_LT(at("B:Attend[0] 4/2/8/8 window=0"), at("A:FinishExperts[0]"));
  EXPECT_LT(at("B:StartExperts[0]"), at("A:Attend[1] 4/2/8/8 window=0"));
  EXPECT_LT(at("A:Attend[1] 4/2/8/8 window=0"), at("B:FinishExperts[0]"));
  // A lane's layer comes after the lane before it wrote that layer's keys.
  EXPECT_LT(at("A:WriteCache[1] k+v"), at("B:WriteCache[1] k+v"));
}

// A lane that fails ends the step, and the experts another lane has away
// are collected first, so that no answer is left in flight.
TEST(DecoderTest, AFailedLaneCollectsTheOthersExperts) {
  ModelConfig c = GqaConfig(2);
  std::vector<std::string> both;
  TraceOps a, b;
  a.log = b.log = &both;
  a.prefix = "A:";
  b.prefix = "B:";
  b.fail_on = "Attend";
  std::vector<float> ha(c.hidden_size), hb(c.hidden_size);
  const DecoderLane lanes[] = {{1, &a, ha.data(), 0}, {1, &b, hb.data(), 1}};
  EXPECT_EQ(RunDecoderLanes(c, MoeWeights(c), lanes, nullptr).code(), absl::StatusCode::kUnavailable);
  ASSERT_GE(both.size(), 2u);
  EXPECT_EQ(both[both.size() - 2], "B:Attend[0] 4/2/8/8 window=0");
  EXPECT_EQ(both.back(), "A:FinishExperts[0]");
}

TEST(DecoderTest, WeightsWithoutTheDensePartAreRefused) {
  ModelConfig c = GqaConfig(2);
  ModelWeights w;  // load_dense was false
  TraceOps ops;
  std::vector<float> hidden(c.hidden_size);
  EXPECT_EQ(RunDecoderLayers(c, w, 1, &ops, nullptr, hidden.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ops.trace.empty());
}

}  // namespace
}  // namespace moemesh
