#include "core/model/random_checkpoint.h"

#include <filesystem>
#include <string>

#include "core/common/file_util.h"
#include "core/model/config.h"
#include "core/model/safetensors.h"
#include "core/model/weights.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

// A directory of its own, empty (an earlier run's checkpoint would be kept).
std::string TempDir(const std::string& name) {
  const std::string dir = JoinPath(::testing::TempDir(), name);
  std::filesystem::remove_all(dir);
  return dir;
}

// What a writer wrote loads as a model of its shape: the config's sizes,
// and every tensor LoadWeights checks against them.
absl::StatusOr<ModelConfig> Load(const std::string& dir) {
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  if (!config.ok()) return config.status();
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir);
  if (!ckpt.ok()) return ckpt.status();
  absl::StatusOr<ModelWeights> w = LoadWeights(std::move(*ckpt), *config);
  if (!w.ok()) return w.status();
  return config;
}

TEST(RandomCheckpointTest, EachArchitectureLoadsAtItsShape) {
  for (RandomMoeShape s : {RandomMoeShape{"mixtral", 2, 64, 4, 2, 16, 4, 2, 96, 300, 1000},
                           RandomMoeShape{"qwen3_moe", 3, 48, 6, 2, 8, 8, 4, 32, 200}}) {
    SCOPED_TRACE(s.model_type);
    const std::string dir = TempDir("random_" + s.model_type);
    absl::StatusOr<bool> wrote = WriteRandomCheckpoint(s, dir);
    ASSERT_TRUE(wrote.ok()) << wrote.status();
    EXPECT_TRUE(*wrote);
    absl::StatusOr<ModelConfig> c = Load(dir);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(ArchitectureName(c->arch), s.model_type);
    EXPECT_EQ(c->num_layers, s.layers);
    EXPECT_EQ(c->hidden_size, s.hidden);
    EXPECT_EQ(c->num_experts, s.experts);
    EXPECT_EQ(c->num_experts_per_tok, s.top_k);
    EXPECT_EQ(c->vocab_size, s.vocab);
    EXPECT_EQ(c->max_position_embeddings, s.max_positions);
  }
  const RandomMlaShape mla{3, 1, 64, 4, 24, 16, 8, 8, 8, 16, 4, 32, 96, 1, 250};
  const std::string dir = TempDir("random_deepseek");
  absl::StatusOr<bool> wrote = WriteRandomCheckpoint(mla, dir);
  ASSERT_TRUE(wrote.ok()) << wrote.status();
  absl::StatusOr<ModelConfig> c = Load(dir);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->arch, Architecture::kDeepseekV3);
  EXPECT_EQ(c->kv_lora_rank, mla.kv_lora);
  EXPECT_EQ(c->is_moe_layer, (std::vector<bool>{false, true, true}));
}

// A second write of the same shape leaves the files alone; another shape
// replaces them.
TEST(RandomCheckpointTest, RewritesOnlyAnotherShape) {
  const std::string dir = TempDir("random_again");
  RandomMoeShape s{"mixtral", 1, 32, 2, 1, 16, 2, 1, 48, 100};
  ASSERT_TRUE(WriteRandomCheckpoint(s, dir).ok());
  absl::StatusOr<bool> again = WriteRandomCheckpoint(s, dir);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(*again);
  s.layers = 2;
  again = WriteRandomCheckpoint(s, dir);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(*again);
  absl::StatusOr<ModelConfig> c = Load(dir);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_layers, 2);
}

TEST(RandomCheckpointTest, ImpossibleShapesAreRefused) {
  const std::string dir = TempDir("random_bad");
  RandomMoeShape s = MixtralShape(0);
  EXPECT_EQ(WriteRandomCheckpoint(s, dir).status().code(), absl::StatusCode::kInvalidArgument);
  s = MixtralShape(1);
  s.model_type = "llama";
  EXPECT_EQ(WriteRandomCheckpoint(s, dir).status().code(), absl::StatusCode::kInvalidArgument);
  s = Qwen3MoeShape(1);
  s.kv_heads = 5;
  EXPECT_EQ(WriteRandomCheckpoint(s, dir).status().code(), absl::StatusCode::kInvalidArgument);
  RandomMlaShape m = DeepSeekV3Shape(2);
  m.experts = 12;
  EXPECT_EQ(WriteRandomCheckpoint(m, dir).status().code(), absl::StatusCode::kInvalidArgument);
}

// The presets are the real models' layer shapes.
TEST(RandomCheckpointTest, PresetsAreTheRealShapes) {
  EXPECT_EQ(MixtralShape(8).expert_width, 14336);
  EXPECT_EQ(Qwen3MoeShape(8).experts, 128);
  EXPECT_EQ(MixtralShape(8).max_positions, 32768);  // long prompts need the real context
  EXPECT_EQ(Qwen3MoeShape(8).max_positions, 40960);
  EXPECT_EQ(DeepSeekV3Shape(3).hidden, 7168);
  EXPECT_EQ(DeepSeekV3Shape(3).experts, 256);
}

}  // namespace
}  // namespace moemesh
