#include "core/model/config.h"

#include <string>

#include "core/common/file_util.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

using Json = nlohmann::json;

Json FixtureConfig(const std::string& name) {
  auto text = ReadFile("tests/fixtures/" + name + "/config.json");
  EXPECT_TRUE(text.ok()) << text.status();
  return Json::parse(*text);
}

absl::StatusOr<ModelConfig> Parse(const Json& j) { return ParseModelConfig(j.dump(), "config.json"); }

TEST(ConfigTest, MixtralFixture) {
  auto c = LoadModelConfig("tests/fixtures/mixtral_sliding");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->arch, Architecture::kMixtral);
  EXPECT_EQ(c->num_experts, 8);
  EXPECT_EQ(c->num_experts_per_tok, 2);
  EXPECT_TRUE(c->norm_topk_prob);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->rope.dim, 16);
  EXPECT_EQ(c->sliding_window, (std::vector<int>{5, 5}));
  EXPECT_EQ(c->rope.theta, 1e6);  // Mixtral's default theta
}

TEST(ConfigTest, Qwen2MoeLayerTypesSharedExpertAndDenseLayers) {
  auto c = LoadModelConfig("tests/fixtures/qwen2_moe_sliding");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sliding_window, (std::vector<int>{4, 0, 4}));
  EXPECT_EQ(c->is_moe_layer, (std::vector<bool>{true, false, true}));
  EXPECT_EQ(c->shared_expert_intermediate_size, 48);
  EXPECT_TRUE(c->shared_expert_gate);
  EXPECT_TRUE(c->attention_bias);
}

TEST(ConfigTest, Qwen3MoeAcceptsBothExpertCountSpellings) {
  Json j = FixtureConfig("qwen3_moe");
  ASSERT_TRUE(j.contains("num_local_experts"));  // how transformers 5 saves it
  auto a = Parse(j);
  ASSERT_TRUE(a.ok()) << a.status();
  j["num_experts"] = j["num_local_experts"];  // how the hub's files say it
  j.erase("num_local_experts");
  auto b = Parse(j);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->num_experts, 8);
  EXPECT_EQ(b->num_experts, 8);
  EXPECT_TRUE(a->qk_norm_per_head);
  EXPECT_EQ(a->head_dim, 24);
}

TEST(ConfigTest, DeepseekV3LatentAttentionAndGrouping) {
  auto c = LoadModelConfig("tests/fixtures/deepseek_v3");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->mla);
  EXPECT_EQ(c->scoring, ScoringFunc::kSigmoid);
  EXPECT_EQ(c->n_group, 4);
  EXPECT_EQ(c->topk_group, 2);
  EXPECT_DOUBLE_EQ(c->routed_scaling_factor, 2.5);
  EXPECT_EQ(c->is_moe_layer, (std::vector<bool>{false, true, true}));
  EXPECT_EQ(c->shared_expert_intermediate_size, 32);
  EXPECT_EQ(c->rope.type, RopeType::kYarn);
  EXPECT_EQ(c->rope.dim, 8);
  EXPECT_TRUE(c->rope.interleaved);
  EXPECT_EQ(c->rope.original_max_position_embeddings, 16);
  // (16 + 8)^-0.5 * (0.1 * ln 4 + 1)^2
  double m = 0.1 * std::log(4.0) + 1.0;
  EXPECT_NEAR(c->AttentionScale(), m * m / std::sqrt(24.0), 1e-12);
}

TEST(ConfigTest, RopeParsedFromAllThreeSpellings) {
  Json base = FixtureConfig("olmoe_dynamic");
  base.erase("rope_parameters");
  Json legacy_type = base, legacy_rope_type = base;
  legacy_type["rope_theta"] = 5000.0;
  legacy_type["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
  legacy_rope_type["rope_theta"] = 5000.0;
  legacy_rope_type["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 2.0}};
  Json v5 = base;
  v5["rope_parameters"] = {{"rope_type", "dynamic"}, {"factor", 2.0}, {"rope_theta", 5000.0}};
  for (const Json& j : {legacy_type, legacy_rope_type, v5}) {
    auto c = Parse(j);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->rope.type, RopeType::kDynamic);
    EXPECT_EQ(c->rope.factor, 2.0);
    EXPECT_EQ(c->rope.theta, 5000.0);
  }
}

TEST(ConfigTest, YarnFactorDerivedFromLengthsWhenAbsent) {
  Json j = FixtureConfig("qwen3_moe");
  j["max_position_embeddings"] = 64;
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"original_max_position_embeddings", 16}};
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope.factor, 4.0);
}

TEST(ConfigTest, UnknownArchitectureIsNamed) {
  Json j = FixtureConfig("mixtral");
  j["model_type"] = "llama4";
  auto c = Parse(j);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("llama4"), std::string::npos);
  EXPECT_NE(c.status().message().find("deepseek_v3"), std::string::npos);
}

TEST(ConfigTest, ArchitectureFromClassNameWhenModelTypeMissing) {
  Json j = FixtureConfig("olmoe");
  j.erase("model_type");
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->arch, Architecture::kOlmoe);
}

TEST(ConfigTest, BadFieldsGetClearErrors) {
  Json j = FixtureConfig("mixtral");
  j["hidden_size"] = "64";
  auto c = Parse(j);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("hidden_size"), std::string::npos);

  j = FixtureConfig("mixtral");
  j.erase("num_local_experts");
  c = Parse(j);
  EXPECT_NE(c.status().message().find("num_local_experts"), std::string::npos);

  j = FixtureConfig("mixtral");
  j["num_key_value_heads"] = 3;
  c = Parse(j);
  EXPECT_NE(c.status().message().find("multiple of num_key_value_heads"), std::string::npos);

  j = FixtureConfig("mixtral");
  j["rope_parameters"] = {{"rope_type", "longrope"}};
  c = Parse(j);
  EXPECT_NE(c.status().message().find("longrope"), std::string::npos);

  EXPECT_EQ(ParseModelConfig("{not json", "x.json").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ConfigTest, ContextLengthFollowsRopeScaling) {
  struct Case {
    const char* fixture;
    int context;
  };
  // default: max_position_embeddings; dynamic and linear: times the factor;
  // yarn: at least original * factor; llama3: max_position_embeddings.
  for (const Case& c : {Case{"mixtral", 256}, Case{"olmoe_dynamic", 32}, Case{"qwen2_moe_linear", 512},
                        Case{"qwen3_moe_yarn", 32}, Case{"deepseek_v3", 64}, Case{"mixtral_llama3", 256}}) {
    auto config = LoadModelConfig(std::string("tests/fixtures/") + c.fixture);
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(config->context_length(), c.context) << c.fixture;
  }
}

TEST(ConfigTest, MissingDirectoryIsNotFound) {
  auto c = LoadModelConfig("/nonexistent/model");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(c.status().message().find("/nonexistent/model/config.json"), std::string::npos);
}

}  // namespace
}  // namespace moemesh
