#include "core/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace moemesh {
namespace {

std::vector<float> Logits() { return {0.1f, 2.0f, 1.5f, -1.0f, 1.9f}; }

int SampleOnce(const SamplingParams& p, std::vector<int> prompt = {}) {
  Sampler s(p, prompt);
  std::vector<float> l = Logits();
  return s.Sample(l.data(), static_cast<int>(l.size()));
}

SamplingParams Greedy() {
  SamplingParams p;
  p.temperature = 0;
  return p;
}

TEST(SamplerTest, GreedyPicksArgmax) { EXPECT_EQ(SampleOnce(Greedy()), 1); }

// One default per parameter, vLLM's (and the wire's, and the CLI's).
TEST(SamplerTest, DefaultsAreVllms) {
  const SamplingParams d;
  EXPECT_EQ(d.temperature, 1.0f);
  EXPECT_EQ(d.top_k, 0);
  EXPECT_EQ(d.top_p, 1.0f);
  EXPECT_EQ(d.min_p, 0.0f);
  EXPECT_EQ(d.repetition_penalty, 1.0f);
  EXPECT_FALSE(d.seed.has_value());
}

TEST(SamplerTest, ValidationNamesTheParameter) {
  SamplingParams p;
  p.top_p = 0;
  EXPECT_NE(p.Validate().message().find("top_p"), std::string::npos);
  p = {};
  p.temperature = -1;
  EXPECT_NE(p.Validate().message().find("temperature"), std::string::npos);
  p = {};
  p.min_p = 2;
  EXPECT_NE(p.Validate().message().find("min_p"), std::string::npos);
  p = {};
  p.top_k = -3;
  EXPECT_NE(p.Validate().message().find("top_k"), std::string::npos);
  p = {};
  p.repetition_penalty = 0;
  EXPECT_NE(p.Validate().message().find("repetition_penalty"), std::string::npos);
  p = {};
  p.frequency_penalty = 3;
  EXPECT_NE(p.Validate().message().find("frequency_penalty"), std::string::npos);
  EXPECT_TRUE(SamplingParams{}.Validate().ok());
}

TEST(SamplerTest, FiltersThatLeaveOneTokenAreGreedy) {
  for (int i = 0; i < 20; ++i) {
    SamplingParams p;
    p.temperature = 1.0f;
    p.seed = i;
    p.top_k = 1;
    EXPECT_EQ(SampleOnce(p), 1);
    p.top_k = 0;
    p.top_p = 0.01f;
    EXPECT_EQ(SampleOnce(p), 1);
    p.top_p = 1;
    p.min_p = 1.0f;
    EXPECT_EQ(SampleOnce(p), 1);
  }
}

TEST(SamplerTest, SameSeedSameTokens) {
  SamplingParams p;
  p.temperature = 1.5f;
  p.seed = 42;
  Sampler a(p, {}), b(p, {});
  std::vector<int> ta, tb;
  for (int i = 0; i < 200; ++i) {
    std::vector<float> la = Logits(), lb = Logits();
    ta.push_back(a.Sample(la.data(), 5));
    tb.push_back(b.Sample(lb.data(), 5));
  }
  EXPECT_EQ(ta, tb);
  p.seed = 43;
  Sampler c(p, {});
  std::vector<int> tc;
  for (int i = 0; i < 200; ++i) {
    std::vector<float> l = Logits();
    tc.push_back(c.Sample(l.data(), 5));
  }
  EXPECT_NE(ta, tc);
}

// With temperature 1 and no filters, frequencies follow softmax(logits).
TEST(SamplerTest, FrequenciesFollowSoftmax) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 7;
  std::vector<float> l = Logits();
  double z = 0;
  for (float x : l) z += std::exp(x);
  std::vector<int> counts(5);
  const int n = 40000;
  for (int i = 0; i < n; ++i) {
    p.seed = 1000 + i;
    ++counts[SampleOnce(p)];
  }
  for (int t = 0; t < 5; ++t) {
    EXPECT_NEAR(counts[t] / double(n), std::exp(l[t]) / z, 0.01) << "token " << t;
  }
}

TEST(SamplerTest, PenaltiesSteerAwayFromSeenTokens) {
  SamplingParams p;
  p.temperature = 0;  // greedy
  p.repetition_penalty = 2.0f;  // 2.0 -> 1.0 for token 1 seen in the prompt
  EXPECT_EQ(SampleOnce(p, {1}), 4);
  // Presence/frequency apply to output tokens only: after emitting token 1
  // the next greedy pick moves to token 4.
  p = Greedy();
  p.presence_penalty = 0.2f;
  Sampler s(p, {});
  std::vector<float> l = Logits();
  EXPECT_EQ(s.Sample(l.data(), 5), 1);
  l = Logits();
  EXPECT_EQ(s.Sample(l.data(), 5), 4);
}

// The parts a GPU sampler uses stay in step with Sample: Draw takes the
// draw Sample would, Record keeps the same penalty state, and
// PenaltyTokens lists every prompt and output token once with its output
// count.
TEST(SamplerTest, PartsMatchSample) {
  SamplingParams p;
  p.temperature = 0.8f;
  p.seed = 42;
  p.repetition_penalty = 1.3f;
  p.frequency_penalty = 0.5f;
  Sampler whole(p, {3, 3, 0}), parts(p, {3, 3, 0});
  std::vector<float> l = Logits();
  const int first = whole.Sample(l.data(), 5);
  parts.Draw();
  parts.Record(first);
  for (int step = 0; step < 20; ++step) {  // the same draws and penalties from here on
    std::vector<float> a = Logits(), b = Logits();
    EXPECT_EQ(whole.Sample(a.data(), 5), parts.Sample(b.data(), 5)) << "step " << step;
  }
  Sampler counted(p, {3, 0});
  counted.Record(4);
  counted.Record(4);
  counted.Record(3);
  std::vector<std::pair<int, int>> got = counted.PenaltyTokens();
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<std::pair<int, int>>{{0, 0}, {3, 1}, {4, 2}}));
  EXPECT_TRUE(Sampler(SamplingParams{}, {1, 2}).PenaltyTokens().empty());  // no penalties: nothing to list
  EXPECT_EQ(Sampler(Greedy(), {}).Draw(), 0.0);                           // greedy draws nothing
}

}  // namespace
}  // namespace moemesh
