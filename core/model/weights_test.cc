#include "core/model/weights.h"

#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "core/common/file_util.h"
#include "core/tensor/thread_pool.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

using TensorMap = std::map<std::string, TensorToWrite>;

// Copies a single-file fixture to a temporary directory, letting `edit`
// change its tensors. Returns the new directory.
std::string CopyFixture(const std::string& name, const std::string& tag,
                        const std::function<void(TensorMap*)>& edit) {
  std::string src = "tests/fixtures/" + name;
  std::string dst = JoinPath(::testing::TempDir(), name + "_" + tag);
  EXPECT_EQ(std::system(("rm -rf " + dst + " && mkdir -p " + dst + " && cp " + src +
                         "/config.json " + dst + "/").c_str()),
            0);
  auto f = SafetensorsFile::Open(src + "/model.safetensors");
  EXPECT_TRUE(f.ok()) << f.status();
  TensorMap tensors;
  for (const auto& [n, t] : (*f)->tensors()) {
    tensors[n] = TensorToWrite{n, t.dtype, t.shape,
                               std::string(static_cast<const char*>(t.data), t.nbytes)};
  }
  edit(&tensors);
  std::vector<TensorToWrite> list;
  for (auto& [n, t] : tensors) list.push_back(t);
  EXPECT_TRUE(WriteSafetensors(dst + "/model.safetensors", list).ok());
  return dst;
}

absl::StatusOr<ModelWeights> Load(const std::string& dir, const WeightLoadOptions& opt = {}) {
  auto config = LoadModelConfig(dir);
  if (!config.ok()) return config.status();
  auto ckpt = Checkpoint::Open(dir);
  if (!ckpt.ok()) return ckpt.status();
  return LoadWeights(std::move(*ckpt), *config, opt);
}

TEST(WeightsTest, LoadsEveryFixture) {
  for (const char* name : {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3",
                           "deepseek_v3_nolora"}) {
    auto w = Load(std::string("tests/fixtures/") + name);
    ASSERT_TRUE(w.ok()) << name << ": " << w.status();
    EXPECT_FALSE(w->embed.empty());
    EXPECT_FALSE(w->lm_head.empty());
    EXPECT_GT(w->experts.size(), 0u) << name;
  }
}

TEST(WeightsTest, ExpertFilterAndDenseSwitch) {
  WeightLoadOptions opt;
  opt.load_dense = false;
  opt.load_expert = [](int layer, int expert) { return expert % 4 == 1; };
  auto w = Load("tests/fixtures/mixtral", opt);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE(w->layers.empty());
  EXPECT_TRUE(w->embed.empty());
  EXPECT_EQ(w->experts.size(), 4u);  // 2 layers x experts {1, 5}
  EXPECT_NE(w->experts.Find(1, 5), nullptr);
  EXPECT_EQ(w->experts.Find(1, 4), nullptr);
  // DeepSeek-V3's dense first layer has no experts to load.
  auto ds = Load("tests/fixtures/deepseek_v3");
  ASSERT_TRUE(ds.ok());
  EXPECT_EQ(ds->experts.size(), 16u);
  EXPECT_EQ(ds->experts.Find(0, 0), nullptr);
  EXPECT_FALSE(ds->layers[0].dense.empty());
  EXPECT_FALSE(ds->layers[1].shared_expert.empty());
}

TEST(WeightsTest, MisShapedTensorIsNamed) {
  const std::string bad = "model.layers.1.self_attn.k_proj.weight";
  std::string dir = CopyFixture("mixtral", "misshaped", [&](TensorMap* t) {
    TensorToWrite& k = (*t)[bad];
    k.shape = {16, 64};
    k.bytes.resize(16 * 64 * 2);
  });
  auto w = Load(dir);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(w.status().message().find(bad), std::string::npos) << w.status();
  EXPECT_NE(w.status().message().find("[16, 64]"), std::string::npos);
  EXPECT_NE(w.status().message().find(dir), std::string::npos);
}

TEST(WeightsTest, MissingTensorIsNamed) {
  const std::string gone = "model.layers.0.block_sparse_moe.experts.3.w1.weight";
  std::string dir = CopyFixture("mixtral", "missing", [&](TensorMap* t) { t->erase(gone); });
  auto w = Load(dir);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(w.status().message().find(gone), std::string::npos);
}

TEST(WeightsTest, IntegerWeightsAreRejected) {
  const std::string name = "model.norm.weight";
  std::string dir = CopyFixture("olmoe", "int_weights", [&](TensorMap* t) {
    (*t)[name].dtype = DType::kI8;
    (*t)[name].bytes.resize(64);
  });
  auto w = Load(dir);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(w.status().message().find("I8"), std::string::npos);
}

// Experts quantized as they load, on a pool's threads: every expert's
// projections become codes, the dense weights stay as stored; a weight that
// cannot be quantized names its layer, expert and projection.
TEST(WeightsTest, QuantizedExpertsAndTheirErrors) {
  ThreadPool pool(2);
  WeightLoadOptions opt;
  opt.quantize_experts = *ParseQuantSpec("int4:32");
  opt.pool = &pool;
  auto w = Load("tests/fixtures/olmoe", opt);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->quantized.size(), 3 * w->experts.size());
  const FfnWeights* f = w->experts.Find(1, 3);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->gate.quant, QuantKind::kInt4);
  EXPECT_EQ(f->down.quant, QuantKind::kInt4);
  EXPECT_EQ(f->down.rows, 64);
  EXPECT_FALSE(w->layers[1].attn.q.quantized());

  const std::string name = "model.layers.1.mlp.experts.3.down_proj.weight";
  std::string dir = CopyFixture("olmoe", "huge_weight", [&](TensorMap* t) {
    const uint16_t huge = F32ToBf16(3e38f);  // 8 steps of it / 7 overflow
    std::memcpy((*t)[name].bytes.data(), &huge, sizeof huge);
  });
  auto bad = Load(dir, opt);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("layer 1 expert 3's down projection to int4:32"), std::string::npos)
      << bad.status();
  opt.quantize_experts = *ParseQuantSpec("int8");
  EXPECT_TRUE(Load(dir, opt).ok());
}

// transformers 5 keeps experts fused in memory; a checkpoint saved without
// reverting that ([E, 2I, H] gate_up_proj, [E, H, I] down_proj) must map to
// the same expert matrices.
TEST(WeightsTest, FusedExpertLayoutMapsToSameMatrices) {
  std::string dir = CopyFixture("olmoe", "fused", [](TensorMap* t) {
    for (int layer = 0; layer < 2; ++layer) {
      std::string p = absl::StrCat("model.layers.", layer, ".mlp.experts.");
      std::string gate_up, down;
      for (int e = 0; e < 8; ++e) {
        std::string q = absl::StrCat(p, e, ".");
        gate_up += (*t)[q + "gate_proj.weight"].bytes + (*t)[q + "up_proj.weight"].bytes;
        down += (*t)[q + "down_proj.weight"].bytes;
        for (const char* n : {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}) t->erase(q + n);
      }
      (*t)[p + "gate_up_proj"] = {p + "gate_up_proj", DType::kBF16, {8, 64, 64}, gate_up};
      (*t)[p + "down_proj"] = {p + "down_proj", DType::kBF16, {8, 64, 32}, down};
    }
  });
  auto fused = Load(dir);
  ASSERT_TRUE(fused.ok()) << fused.status();
  auto plain = Load("tests/fixtures/olmoe");
  ASSERT_TRUE(plain.ok());
  for (int layer = 0; layer < 2; ++layer) {
    for (int e = 0; e < 8; ++e) {
      const FfnWeights* a = fused->experts.Find(layer, e);
      const FfnWeights* b = plain->experts.Find(layer, e);
      ASSERT_NE(a, nullptr);
      for (auto [x, y] : {std::pair{a->gate, b->gate}, {a->up, b->up}, {a->down, b->down}}) {
        ASSERT_EQ(x.rows, y.rows);
        ASSERT_EQ(x.cols, y.cols);
        EXPECT_EQ(std::memcmp(x.data, y.data, x.nbytes()), 0) << layer << "/" << e;
      }
    }
  }
}

// Mixtral under transformers 5 names its MoE block `mlp` rather than the
// hub's `block_sparse_moe`.
TEST(WeightsTest, MixtralMlpPrefixAccepted) {
  std::string dir = CopyFixture("mixtral", "mlp_prefix", [](TensorMap* t) {
    TensorMap renamed;
    for (auto& [n, v] : *t) {
      std::string m = absl::StrReplaceAll(n, {{".block_sparse_moe.", ".mlp."}});
      v.name = m;
      renamed[m] = v;
    }
    *t = renamed;
  });
  auto w = Load(dir);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->experts.size(), 16u);
}

}  // namespace
}  // namespace moemesh
