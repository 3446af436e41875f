#include "core/model/safetensors.h"

#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/common/file_util.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

std::string Bytes(const void* p, size_t n) { return std::string(static_cast<const char*>(p), n); }

std::string TempPath(const std::string& name) { return JoinPath(::testing::TempDir(), name); }

TEST(SafetensorsTest, WritesAndReadsEveryFloatType) {
  float f32[6] = {1, -2, 3.5f, 0, 1e-3f, 7};
  uint16_t bf16[2] = {F32ToBf16(1.25f), F32ToBf16(-8)};
  uint16_t f16[3] = {F32ToF16(0.5f), F32ToF16(-1), F32ToF16(65504)};
  std::string path = TempPath("rw.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"a", DType::kF32, {2, 3}, Bytes(f32, sizeof f32)},
                                      {"b", DType::kBF16, {2}, Bytes(bf16, sizeof bf16)},
                                      {"c", DType::kF16, {3}, Bytes(f16, sizeof f16)}})
                  .ok());
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  const TensorInfo* a = (*f)->Find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(a->data, f32, sizeof f32), 0);
  float out[3];
  ConvertToF32((*f)->Find("b")->dtype, (*f)->Find("b")->data, 2, out);
  EXPECT_EQ(out[0], 1.25f);
  EXPECT_EQ(out[1], -8.0f);
  ConvertToF32((*f)->Find("c")->dtype, (*f)->Find("c")->data, 3, out);
  EXPECT_EQ(out[2], 65504.0f);
  EXPECT_EQ((*f)->Find("missing"), nullptr);
}

TEST(SafetensorsTest, TruncatedFileNamesFileAndTensor) {
  std::vector<float> big(1000, 1.0f);
  std::string path = TempPath("trunc.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"weights.big", DType::kF32, {1000}, Bytes(big.data(), 4000)}}).ok());
  auto full = ReadFile(path);
  ASSERT_TRUE(full.ok());
  ASSERT_TRUE(WriteFileAtomically(path, full->substr(0, full->size() - 100)).ok());
  auto f = SafetensorsFile::Open(path);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(f.status().message().find(path), std::string::npos);
  EXPECT_NE(f.status().message().find("weights.big"), std::string::npos);
  EXPECT_NE(f.status().message().find("truncated"), std::string::npos);
}

TEST(SafetensorsTest, BadHeadersAreRejected) {
  std::string path = TempPath("bad.safetensors");
  auto open_with = [&](const std::string& content) {
    EXPECT_TRUE(WriteFileAtomically(path, content).ok());
    return SafetensorsFile::Open(path).status();
  };
  auto header = [](const std::string& json) {
    std::string s(8, '\0');
    uint64_t n = json.size();
    std::memcpy(s.data(), &n, 8);
    return s + json;
  };
  EXPECT_EQ(open_with("abc").code(), absl::StatusCode::kDataLoss);              // < 8 bytes
  EXPECT_EQ(open_with(header("{nope")).code(), absl::StatusCode::kDataLoss);    // not JSON
  std::string huge(8, '\xff');
  EXPECT_NE(open_with(huge + "{}").message().find("exceeds file size"), std::string::npos);
  auto st = open_with(header(R"({"t":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}})") +
                      std::string(8, '\0'));
  EXPECT_NE(st.message().find("needs 16"), std::string::npos) << st;
  st = open_with(header(R"({"t":{"dtype":"F8_E5M2","shape":[1],"data_offsets":[0,1]}})") + "x");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("F8_E5M2"), std::string::npos);
  st = open_with(header(R"({"t":{"dtype":"F32","shape":[1]}})"));
  EXPECT_NE(st.message().find("\"t\""), std::string::npos);
}

TEST(CheckpointTest, OpensShardedCheckpoint) {
  auto c = Checkpoint::Open("tests/fixtures/qwen3_moe");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE((*c)->Has("model.embed_tokens.weight"));
  EXPECT_TRUE((*c)->Has("lm_head.weight"));
  EXPECT_TRUE((*c)->Has("model.layers.1.mlp.experts.7.down_proj.weight"));
  EXPECT_GT((*c)->num_tensors(), 50u);
}

TEST(CheckpointTest, GetFloatChecksShapeAndNamesEverything) {
  auto c = Checkpoint::Open("tests/fixtures/mixtral");
  ASSERT_TRUE(c.ok()) << c.status();
  auto t = (*c)->GetFloat("model.norm.weight", {64});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->dtype, DType::kBF16);
  auto bad = (*c)->GetFloat("model.norm.weight", {32});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("model.norm.weight"), std::string::npos);
  EXPECT_NE(bad.status().message().find("[64]"), std::string::npos);
  EXPECT_NE(bad.status().message().find("model.safetensors"), std::string::npos);
  auto missing = (*c)->Get("model.layers.9.foo");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("model.layers.9.foo"), std::string::npos);
}

TEST(CheckpointTest, MissingWeightsAndShards) {
  auto none = Checkpoint::Open(::testing::TempDir() + "/no_such_model");
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  std::string dir = TempPath("bad_index");
  ASSERT_EQ(system(("mkdir -p " + dir).c_str()), 0);
  ASSERT_TRUE(WriteFileAtomically(dir + "/model.safetensors.index.json",
                                  R"({"weight_map": {"a": "model-00001-of-00002.safetensors"}})")
                  .ok());
  auto c = Checkpoint::Open(dir);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(c.status().message().find("model-00001-of-00002.safetensors"), std::string::npos);
}

// A weights file that links to a FIFO, a device or a directory is refused
// at once (no hang, no endless read); one that links to a regular file, as
// in Hugging Face's cache, is read; and a shard name cannot leave the
// model's directory.
TEST(CheckpointTest, WeightsMustBeRegularFilesInTheModelDirectory) {
  const std::string dir = TempPath("linked_model");
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir + "/blobs");
  std::filesystem::create_directories(dir + "/snapshot");
  std::filesystem::copy_file("tests/fixtures/mixtral/model.safetensors", dir + "/blobs/abc");
  std::filesystem::create_symlink("../blobs/abc", dir + "/snapshot/model.safetensors");
  auto linked = Checkpoint::Open(dir + "/snapshot");
  EXPECT_TRUE(linked.ok()) << linked.status();
  for (const std::string& target : {std::string("/dev/zero"), dir + "/fifo", dir + "/blobs"}) {
    if (target == dir + "/fifo") {
      ASSERT_EQ(mkfifo(target.c_str(), 0600), 0);
    }
    const std::string model = dir + "/bad";
    std::filesystem::remove_all(model);
    std::filesystem::create_directories(model);
    std::filesystem::create_symlink(target, model + "/model.safetensors");
    auto c = Checkpoint::Open(model);
    EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition) << target << ": " << c.status();
  }
  const std::string escaping = dir + "/escaping";
  std::filesystem::create_directories(escaping);
  ASSERT_TRUE(WriteFileAtomically(escaping + "/model.safetensors.index.json",
                                  R"({"weight_map": {"a": "../blobs/abc"}})")
                  .ok());
  EXPECT_EQ(Checkpoint::Open(escaping).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moemesh
