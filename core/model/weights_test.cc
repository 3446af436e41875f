#include "core/model/weights.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "core/common/file_util.h"
#include "core/kernels/cpu/linear.h"
#include "core/tensor/thread_pool.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

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

// A 4-bit layer quantized to nearest in groups of 32 inputs (zero point
// and F16 scale a group), packed as GPTQ (v1: zero points minus one) or AWQ
// store it, and its dequantized weights, (code - zero) * scale.
struct PackedLayer {
  TensorToWrite qweight, qzeros, scales, dequantized;
};

PackedLayer PackLayer(const TensorToWrite& w, bool gptq) {
  const int rows = static_cast<int>(w.shape[0]), cols = static_cast<int>(w.shape[1]), group = 32;
  const int groups = cols / group;
  std::vector<float> f(static_cast<size_t>(rows) * cols);
  ConvertToF32(w.dtype, w.bytes.data(), f.size(), f.data());
  std::vector<int32_t> qweight(gptq ? static_cast<size_t>(cols / 8) * rows : static_cast<size_t>(cols) * rows / 8);
  std::vector<int32_t> qzeros(static_cast<size_t>(groups) * rows / 8);
  std::vector<uint16_t> scales(static_cast<size_t>(groups) * rows);
  std::vector<float> deq(f.size());
  const int awq_order[8] = {0, 2, 4, 6, 1, 3, 5, 7};  // the output each nibble holds
  int awq_nibble[8];
  for (int j = 0; j < 8; ++j) awq_nibble[awq_order[j]] = j;
  for (int o = 0; o < rows; ++o) {
    for (int g = 0; g < groups; ++g) {
      float lo = 0, hi = 0;
      for (int i = g * group; i < (g + 1) * group; ++i) lo = std::min(lo, f[o * cols + i]), hi = std::max(hi, f[o * cols + i]);
      const float scale = F16ToF32(F32ToF16((hi - lo) / 15));
      const int zero = scale > 0 ? std::clamp(static_cast<int>(std::nearbyint(-lo / scale)), 0, 15) : 0;
      scales[static_cast<size_t>(g) * rows + o] = F32ToF16(scale);
      const uint32_t stored = gptq ? zero - 1 : zero;  // v1's zero - 1 (0 stores 15, wrapping as it does)
      const int nib = gptq ? o % 8 : awq_nibble[o % 8];
      qzeros[static_cast<size_t>(g) * rows / 8 + o / 8] |= static_cast<int32_t>((stored & 15u) << (4 * nib));
      // What the format says the zero point is: v1 reads its stored value plus one.
      const int read_zero = gptq ? static_cast<int>(stored & 15u) + 1 : zero;
      for (int i = g * group; i < (g + 1) * group; ++i) {
        const int code = scale > 0 ? std::clamp(static_cast<int>(std::nearbyint(f[o * cols + i] / scale)) + zero, 0, 15)
                                   : zero;
        deq[o * cols + i] = (static_cast<float>(code) - static_cast<float>(read_zero)) * scale;
        if (gptq) {
          qweight[static_cast<size_t>(i / 8) * rows + o] |= static_cast<int32_t>(static_cast<uint32_t>(code) << (4 * (i % 8)));
        } else {
          qweight[static_cast<size_t>(i) * rows / 8 + o / 8] |= static_cast<int32_t>(static_cast<uint32_t>(code) << (4 * nib));
        }
      }
    }
  }
  auto bytes = [](const auto& v) { return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(v[0])); };
  const std::string layer = w.name.substr(0, w.name.size() - 7);
  PackedLayer p;
  p.qweight = {layer + ".qweight", DType::kI32,
               gptq ? std::vector<int64_t>{cols / 8, rows} : std::vector<int64_t>{cols, rows / 8}, bytes(qweight)};
  p.qzeros = {layer + ".qzeros", DType::kI32, {groups, rows / 8}, bytes(qzeros)};
  p.scales = {layer + ".scales", DType::kF16, {groups, rows}, bytes(scales)};
  p.dequantized = {w.name, DType::kF32, w.shape, bytes(deq)};
  return p;
}

// GPTQ and AWQ checkpoints (attention and experts in 4 bits, the router and
// embeddings as stored) load as their dequantized weights do: the same logits.
TEST(WeightsTest, GptqAndAwqCheckpointsLoadAsTheirDequantizedWeights) {
  auto quantized = [](const std::string& name) {
    return absl::EndsWith(name, "_proj.weight") && absl::StrContains(name, "layers.");
  };
  auto fixture_config = ReadFile("tests/fixtures/olmoe/config.json");
  ASSERT_TRUE(fixture_config.ok());
  for (bool gptq : {true, false}) {
    const std::string kind = gptq ? "gptq" : "awq";
    std::string packed_dir = CopyFixture("olmoe", kind, [&](TensorMap* t) {
      TensorMap out;
      for (auto& [n, w] : *t) {
        if (!quantized(n)) {
          out[n] = w;
          continue;
        }
        PackedLayer p = PackLayer(w, gptq);
        for (TensorToWrite* x : {&p.qweight, &p.qzeros, &p.scales}) out[x->name] = *x;
        if (gptq) {
          std::vector<int32_t> g_idx(w.shape[1]);
          for (size_t i = 0; i < g_idx.size(); ++i) g_idx[i] = static_cast<int32_t>(i / 32);
          const std::string layer = n.substr(0, n.size() - 7);
          out[layer + ".g_idx"] = {layer + ".g_idx", DType::kI32, {w.shape[1]},
                                   std::string(reinterpret_cast<const char*>(g_idx.data()), g_idx.size() * 4)};
        }
      }
      *t = std::move(out);
    });
    std::string dense_dir = CopyFixture("olmoe", kind + "_dequantized", [&](TensorMap* t) {
      for (auto& [n, w] : *t) {
        if (quantized(n)) w = PackLayer(w, gptq).dequantized;
      }
    });
    nlohmann::json cfg = nlohmann::json::parse(*fixture_config);
    cfg["quantization_config"] = gptq ? nlohmann::json{{"quant_method", "gptq"}, {"bits", 4}, {"group_size", 32},
                                                       {"desc_act", false}, {"sym", false}}
                                      : nlohmann::json{{"quant_method", "awq"}, {"bits", 4}, {"group_size", 32},
                                                       {"version", "gemm"}, {"zero_point", true}};
    ASSERT_TRUE(WriteFileAtomically(packed_dir + "/config.json", cfg.dump()).ok());

    auto packed = Load(packed_dir);
    ASSERT_TRUE(packed.ok()) << kind << ": " << packed.status();
    EXPECT_EQ(packed->layers[1].attn.q.quant, QuantKind::kInt4);
    EXPECT_EQ(packed->experts.Find(1, 3)->down.quant, QuantKind::kInt4);
    EXPECT_FALSE(packed->layers[1].router.quantized());
    auto dense = Load(dense_dir);
    ASSERT_TRUE(dense.ok()) << dense.status();
    // Every layer's weights, as the kernels see them, against the dequantized ones.
    std::vector<float> a(64), b(64);
    const FfnWeights* pe = packed->experts.Find(1, 3);
    const FfnWeights* de = dense->experts.Find(1, 3);
    using Pair = std::pair<const Matrix*, const Matrix*>;
    for (auto [p, d] : {Pair{&packed->layers[0].attn.q, &dense->layers[0].attn.q},
                        Pair{&packed->layers[1].attn.v, &dense->layers[1].attn.v}, Pair{&pe->gate, &de->gate},
                        Pair{&pe->down, &de->down}}) {
      for (int r = 0; r < p->rows; ++r) {
        GatherRow(*p, r, a.data());
        GatherRow(*d, r, b.data());
        for (int c = 0; c < p->cols; ++c) ASSERT_NEAR(a[c], b[c], 1e-6 * (1 + std::fabs(b[c]))) << kind << " row " << r;
      }
    }
  }
}

// An E4M3 byte's value from the format's definition (not the decoder under test).
double E4M3Value(uint8_t b) {
  const int e = (b >> 3) & 15, m = b & 7;
  const double v = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1 + m / 8.0, e - 7);
  return (b & 0x80) ? -v : v;
}

// DeepSeek-V3's FP8 layout (E4M3 weights, an F32 weight_scale_inv a block of
// 16 x 32 here, partial blocks at the edges): every projection of the
// decoder layers loads as its dequantized weights do; the router and
// embeddings stay as stored.
TEST(WeightsTest, Fp8CheckpointsLoadAsTheirDequantizedWeights) {
  const int block_rows = 16, block_cols = 32;
  auto quantized = [](const std::string& name) {
    return absl::EndsWith(name, "_proj.weight") || absl::EndsWith(name, "_proj_with_mqa.weight");
  };
  // Nearest E4M3 byte (of the 254 that are not NaN) to each weight / its block's scale.
  auto to_fp8 = [&](const TensorToWrite& w, TensorToWrite* scale_inv) {
    const int rows = static_cast<int>(w.shape[0]), cols = static_cast<int>(w.shape[1]);
    const int gr = (rows + block_rows - 1) / block_rows, gc = (cols + block_cols - 1) / block_cols;
    std::vector<float> f(static_cast<size_t>(rows) * cols), scales(static_cast<size_t>(gr) * gc, 0.f);
    ConvertToF32(w.dtype, w.bytes.data(), f.size(), f.data());
    for (int r = 0; r < rows; ++r) {
      for (int c = 0; c < cols; ++c) {
        float& s = scales[(r / block_rows) * gc + c / block_cols];
        s = std::max(s, std::fabs(f[r * cols + c]) / 448.0f);
      }
    }
    std::string codes(f.size(), '\0');
    for (size_t i = 0; i < f.size(); ++i) {
      const float s = scales[(i / cols / block_rows) * gc + (i % cols) / block_cols];
      const double x = s > 0 ? f[i] / s : 0.0;
      int best = 0;
      for (int b = 0; b < 256; ++b) {
        if ((b & 0x7F) == 0x7F) continue;
        if (std::fabs(E4M3Value(b) - x) < std::fabs(E4M3Value(best) - x)) best = b;
      }
      codes[i] = static_cast<char>(best);
    }
    *scale_inv = {w.name + "_scale_inv", DType::kF32, {gr, gc},
                  std::string(reinterpret_cast<const char*>(scales.data()), scales.size() * 4)};
    return TensorToWrite{w.name, DType::kF8E4M3, w.shape, codes};
  };
  std::string fp8_dir = CopyFixture("deepseek_v3", "fp8", [&](TensorMap* t) {
    TensorMap out;
    for (auto& [n, w] : *t) {
      if (!quantized(n)) {
        out[n] = w;
        continue;
      }
      TensorToWrite scale_inv;
      out[n] = to_fp8(w, &scale_inv);
      out[scale_inv.name] = scale_inv;
    }
    *t = std::move(out);
  });
  std::string dense_dir = CopyFixture("deepseek_v3", "fp8_dequantized", [&](TensorMap* t) {
    for (auto& [n, w] : *t) {
      if (!quantized(n)) continue;
      TensorToWrite scale_inv;
      const TensorToWrite q = to_fp8(w, &scale_inv);
      const int rows = static_cast<int>(w.shape[0]), cols = static_cast<int>(w.shape[1]);
      const int gc = (cols + block_cols - 1) / block_cols;
      const float* s = reinterpret_cast<const float*>(scale_inv.bytes.data());
      std::vector<float> deq(static_cast<size_t>(rows) * cols);
      for (size_t i = 0; i < deq.size(); ++i) {
        const int r = static_cast<int>(i / cols), c = static_cast<int>(i % cols);
        deq[i] = static_cast<float>(E4M3Value(static_cast<uint8_t>(q.bytes[i])) * s[(r / block_rows) * gc + c / block_cols]);
      }
      w = {n, DType::kF32, w.shape, std::string(reinterpret_cast<const char*>(deq.data()), deq.size() * 4)};
    }
  });
  auto config = ReadFile("tests/fixtures/deepseek_v3/config.json");
  ASSERT_TRUE(config.ok());
  nlohmann::json cfg = nlohmann::json::parse(*config);
  cfg["quantization_config"] = {{"quant_method", "fp8"}, {"weight_block_size", {block_rows, block_cols}},
                                {"activation_scheme", "dynamic"}, {"fmt", "e4m3"}};
  ASSERT_TRUE(WriteFileAtomically(fp8_dir + "/config.json", cfg.dump()).ok());
  auto fp8 = Load(fp8_dir);
  ASSERT_TRUE(fp8.ok()) << fp8.status();
  auto dense = Load(dense_dir);
  ASSERT_TRUE(dense.ok()) << dense.status();
  EXPECT_EQ(fp8->layers[1].attn.kv_b.quant, QuantKind::kFp8);
  EXPECT_FALSE(fp8->layers[1].router.quantized());
  using Pair = std::pair<const Matrix*, const Matrix*>;
  const FfnWeights* fe = fp8->experts.Find(1, 4);
  const FfnWeights* de = dense->experts.Find(1, 4);
  ASSERT_TRUE(fe != nullptr && de != nullptr);
  std::vector<float> a(256), b(256);
  for (auto [p, d] : {Pair{&fp8->layers[1].attn.kv_b, &dense->layers[1].attn.kv_b},
                      Pair{&fp8->layers[1].attn.q_b, &dense->layers[1].attn.q_b},
                      Pair{&fp8->layers[0].dense.down, &dense->layers[0].dense.down}, Pair{&fe->up, &de->up}}) {
    ASSERT_EQ(p->quant, QuantKind::kFp8);
    for (int r = 0; r < p->rows; ++r) {
      GatherRow(*p, r, a.data());
      GatherRow(*d, r, b.data());
      for (int c = 0; c < p->cols; ++c) ASSERT_EQ(a[c], b[c]) << "row " << r << " col " << c;
    }
  }
}

// An act-order GPTQ checkpoint (desc_act: each input's group in g_idx, the
// groups not runs of inputs) loads each such layer as its exact weights,
// (code - zero) * scale: 4-bit, its inputs taken in their groups' order
// (MatrixView::input_order), where every group holds `group` inputs, as
// GPTQ makes them; else dequantized and rounded to BF16. g_idx out of order
// without desc_act, or desc_act without g_idx, is named.
TEST(WeightsTest, ActOrderGptqLoadsItsWeights) {
  const int group = 32;
  std::map<std::string, std::vector<float>> want;  // each packed layer's weights, as the format defines them
  bool uneven = false;                             // groups of unlike sizes
  auto pack = [&](const TensorToWrite& w, bool with_g_idx, TensorMap* out) {
    const int rows = static_cast<int>(w.shape[0]), cols = static_cast<int>(w.shape[1]), groups = cols / group;
    std::vector<float> f(static_cast<size_t>(rows) * cols);
    ConvertToF32(w.dtype, w.bytes.data(), f.size(), f.data());
    // Input i in group (i * 5 + 3) % groups: every group gets `group` inputs,
    // none a run; uneven: every other input in group 0.
    std::vector<int32_t> g_idx(cols);
    for (int i = 0; i < cols; ++i) g_idx[i] = uneven && i % 2 == 0 ? 0 : (i * 5 + 3) % groups;
    std::vector<int32_t> qweight(static_cast<size_t>(cols / 8) * rows, 0), qzeros(static_cast<size_t>(groups) * rows / 8, 0);
    std::vector<uint16_t> scales(static_cast<size_t>(groups) * rows);
    std::vector<float>& deq = want[w.name];
    deq.assign(f.size(), 0.f);
    for (int o = 0; o < rows; ++o) {
      for (int g = 0; g < groups; ++g) {
        float lo = 0, hi = 0;
        for (int i = 0; i < cols; ++i) {
          if (g_idx[i] == g) lo = std::min(lo, f[o * cols + i]), hi = std::max(hi, f[o * cols + i]);
        }
        const float scale = F16ToF32(F32ToF16((hi - lo) / 15));
        const int zero = scale > 0 ? std::clamp(static_cast<int>(std::nearbyint(-lo / scale)), 0, 15) : 0;
        scales[static_cast<size_t>(g) * rows + o] = F32ToF16(scale);
        qzeros[static_cast<size_t>(g) * rows / 8 + o / 8] |= static_cast<int32_t>(static_cast<uint32_t>(zero) << (4 * (o % 8)));
        for (int i = 0; i < cols; ++i) {
          if (g_idx[i] != g) continue;
          const int code = scale > 0 ? std::clamp(static_cast<int>(std::nearbyint(f[o * cols + i] / scale)) + zero, 0, 15)
                                     : zero;
          deq[o * cols + i] = (static_cast<float>(code) - static_cast<float>(zero)) * scale;
          qweight[static_cast<size_t>(i / 8) * rows + o] |= static_cast<int32_t>(static_cast<uint32_t>(code) << (4 * (i % 8)));
        }
      }
    }
    auto bytes = [](const auto& v) { return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(v[0])); };
    const std::string layer = w.name.substr(0, w.name.size() - 7);
    (*out)[layer + ".qweight"] = {layer + ".qweight", DType::kI32, {cols / 8, rows}, bytes(qweight)};
    (*out)[layer + ".qzeros"] = {layer + ".qzeros", DType::kI32, {groups, rows / 8}, bytes(qzeros)};
    (*out)[layer + ".scales"] = {layer + ".scales", DType::kF16, {groups, rows}, bytes(scales)};
    if (with_g_idx) (*out)[layer + ".g_idx"] = {layer + ".g_idx", DType::kI32, {cols}, bytes(g_idx)};
  };
  auto quantized = [](const std::string& name) {
    return absl::EndsWith(name, "_proj.weight") && absl::StrContains(name, "layers.");
  };
  auto write = [&](const std::string& kind, bool with_g_idx, bool desc_act) {
    std::string dir = CopyFixture("olmoe", kind, [&](TensorMap* t) {
      TensorMap out;
      for (auto& [n, w] : *t) {
        if (quantized(n)) {
          pack(w, with_g_idx, &out);
        } else {
          out[n] = w;
        }
      }
      *t = std::move(out);
    });
    auto config = ReadFile("tests/fixtures/olmoe/config.json");
    EXPECT_TRUE(config.ok());
    nlohmann::json cfg = nlohmann::json::parse(*config);
    cfg["quantization_config"] = {{"quant_method", "gptq"},    {"bits", 4},      {"group_size", group},
                                  {"desc_act", desc_act},      {"sym", false},   {"checkpoint_format", "gptq_v2"}};
    EXPECT_TRUE(WriteFileAtomically(dir + "/config.json", cfg.dump()).ok());
    return dir;
  };
  for (const bool groups_uneven : {false, true}) {
    SCOPED_TRACE(groups_uneven ? "groups of unlike sizes" : "groups of `group` inputs");
    uneven = groups_uneven;
    auto loaded = Load(write(groups_uneven ? "act_order_uneven" : "act_order", true, true));
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    const FfnWeights* e = loaded->experts.Find(1, 3);
    using Named = std::pair<const Matrix*, std::string>;
    for (auto [m, name] : {Named{&loaded->layers[0].attn.q, "model.layers.0.self_attn.q_proj.weight"},
                           Named{&e->gate, "model.layers.1.mlp.experts.3.gate_proj.weight"}}) {
      if (groups_uneven) {
        ASSERT_EQ(m->dtype, DType::kBF16) << name;
        ASSERT_EQ(m->quant, QuantKind::kNone) << name;
      } else {
        ASSERT_EQ(m->quant, QuantKind::kInt4) << name;
        ASSERT_NE(m->input_order, nullptr) << name;
      }
      const std::vector<float>& w = want.at(name);
      std::vector<float> row(m->cols), x(m->cols), y(m->rows);
      for (int c = 0; c < m->cols; ++c) x[c] = std::sin(0.37f * c);
      Linear(x.data(), 1, *m, nullptr, y.data(), nullptr);
      for (int r = 0; r < m->rows; ++r) {
        GatherRow(*m, r, row.data());
        double dot = 0;
        for (int c = 0; c < m->cols; ++c) {
          const float want_w = w[static_cast<size_t>(r) * m->cols + c];
          if (groups_uneven) {
            ASSERT_EQ(row[c], Bf16ToF32(F32ToBf16(want_w))) << name << " " << r << "," << c;
          } else {  // code * scale - zero * scale, fused: within an ulp or two
            ASSERT_NEAR(row[c], want_w, 1e-6f * std::fabs(want_w) + 1e-9f) << name << " " << r << "," << c;
          }
          dot += static_cast<double>(row[c]) * x[c];
        }
        // Linear takes each input where the weights' column wants it.
        ASSERT_NEAR(y[r], dot, 1e-4 * (1 + std::fabs(dot))) << name << " row " << r;
      }
    }
  }
  uneven = false;
  auto no_desc_act = Load(write("act_order_no_desc_act", true, false));
  EXPECT_EQ(no_desc_act.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(no_desc_act.status().message().find("desc_act is false"), std::string::npos) << no_desc_act.status();
  auto no_g_idx = Load(write("act_order_no_g_idx", false, true));
  EXPECT_EQ(no_g_idx.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(no_g_idx.status().message().find("without g_idx"), std::string::npos) << no_g_idx.status();
}

// What a quantized checkpoint's config or tensors get wrong is named.
TEST(WeightsTest, QuantizedCheckpointErrorsAreNamed) {
  auto config = ReadFile("tests/fixtures/olmoe/config.json");
  ASSERT_TRUE(config.ok());
  for (const auto& [qc, want] : std::vector<std::pair<nlohmann::json, std::string>>{
           {{{"quant_method", "bitsandbytes"}}, "quant_method \"bitsandbytes\" is not read"},
           {{{"quant_method", "fp8"}}, "weight_block_size must be [rows, columns]"},
           {{{"quant_method", "fp8"}, {"weight_block_size", {128, 128}}, {"activation_scheme", "static"}},
            "activation_scheme \"static\""},
           {{{"quant_method", "gptq"}, {"bits", 8}, {"group_size", 128}}, "8-bit gptq"},
           {{{"quant_method", "gptq"}, {"bits", 4}, {"group_size", -1}}, "group_size -1"},
           {{{"quant_method", "awq"}, {"bits", 4}, {"group_size", 128}, {"version", "gemv"}}, "AWQ version"},
           {{{"quant_method", "awq"}, {"group_size", 128}}, "missing required field \"bits\""}}) {
    nlohmann::json cfg = nlohmann::json::parse(*config);
    cfg["quantization_config"] = qc;
    auto c = ParseModelConfig(cfg.dump(), "config.json");
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << qc.dump();
    EXPECT_NE(c.status().message().find(want), std::string::npos) << c.status();
  }
  // A GPTQ layer whose qweight has the wrong shape, or whose g_idx reorders
  // the inputs (act-order), is named.
  std::string dir = CopyFixture("olmoe", "gptq_bad", [&](TensorMap* t) {
    TensorMap out;
    for (auto& [n, w] : *t) {
      if (n != "model.layers.0.self_attn.q_proj.weight" && n != "model.layers.0.self_attn.k_proj.weight") {
        out[n] = w;
        continue;
      }
      PackedLayer p = PackLayer(w, true);
      for (TensorToWrite* x : {&p.qweight, &p.qzeros, &p.scales}) out[x->name] = *x;
    }
    out["model.layers.0.self_attn.q_proj.qweight"].shape = {16, 32};
    out["model.layers.0.self_attn.q_proj.qweight"].bytes.resize(16 * 32 * 4);
    *t = std::move(out);
  });
  nlohmann::json cfg = nlohmann::json::parse(*config);
  cfg["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}, {"group_size", 32}};
  ASSERT_TRUE(WriteFileAtomically(dir + "/config.json", cfg.dump()).ok());
  auto w = Load(dir);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(w.status().message().find("q_proj.qweight is I32 [16, 32]; this GPTQ layer needs I32 [8, 64]"),
            std::string::npos)
      << w.status();
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
