#include "core/kv/block_hash.h"

#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/common/file_util.h"
#include "core/kv/fingerprint.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

TEST(BlockHashTest, ChainsParentAndTokens) {
  const BlockHash root = HashBytes("root");
  const std::vector<int> a = {1, 2, 3, 4}, b = {1, 2, 3, 5};
  const BlockHash ha = ChainBlockHash(root, a);
  EXPECT_EQ(ha, ChainBlockHash(root, a));
  EXPECT_NE(ha, ChainBlockHash(root, b));                    // another token
  EXPECT_NE(ha, ChainBlockHash(HashBytes("other"), a));      // another parent
  EXPECT_NE(ChainBlockHash(ha, a), ha);                      // position in the chain counts
  EXPECT_NE(ChainBlockHash(root, {1, 2, 3}), ChainBlockHash(root, {1, 2, 3, 0}));  // length counts
}

// The names are part of the kvcache service's on-disk format: they must not
// change with the build or the machine. The empty string's is XXH3-128's
// published test vector; the chained one was computed once by this code and
// pins the format.
TEST(BlockHashTest, NamesAreStable) {
  EXPECT_EQ(HashBytes("").Hex(), "99aa06d3014798d86001c324468d497f");
  const std::vector<int> t = {0, 1, -1, 151643};
  EXPECT_EQ(ChainBlockHash(BlockHash{}, t).Hex(), ChainBlockHash(BlockHash{0, 0}, t).Hex());
  EXPECT_EQ(ChainBlockHash(BlockHash{1, 2}, t).Hex(), "cdb297e943b8c88a9df3d1e677f81465");
}

TEST(BlockHashTest, ChecksumOfTwoPartsIsTheChecksumOfTheWhole) {
  EXPECT_EQ(Checksum64("key", "value"), Checksum64("keyvalue"));
  EXPECT_EQ(Checksum64("", "value"), Checksum64("value"));
  EXPECT_NE(Checksum64("keyvalue"), Checksum64("keyvaluf"));
}

TEST(BlockHashTest, BytesRoundTripAndRejectBadLengths) {
  const BlockHash h{0x0123456789abcdefULL, 0xfedcba9876543210ULL};
  EXPECT_EQ(h.Hex(), "0123456789abcdeffedcba9876543210");
  absl::StatusOr<BlockHash> back = BlockHash::FromBytes(h.Bytes());
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, h);
  EXPECT_EQ(BlockHash::FromBytes("short").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BlockHash::FromBytes(std::string(17, 'x')).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(FingerprintTest, DependsOnConfigWeightsAndLayout) {
  const std::string dir = "tests/fixtures/mixtral";
  absl::StatusOr<BlockHash> demo = ModelFingerprint(dir);
  ASSERT_TRUE(demo.ok()) << demo.status();
  EXPECT_EQ(*ModelFingerprint(dir), *demo);
  EXPECT_EQ(ModelFingerprint("/nonexistent").status().code(), absl::StatusCode::kNotFound);

  // A copy of the checkpoint with one weight byte changed has another
  // fingerprint; so does one with another config.
  const std::string tmp = absl::StrCat(::testing::TempDir(), "/fp_model");
  std::filesystem::create_directories(tmp);
  std::filesystem::copy(dir, tmp, std::filesystem::copy_options::overwrite_existing |
                                      std::filesystem::copy_options::recursive);
  EXPECT_EQ(*ModelFingerprint(tmp), *demo);
  std::string weights = *ReadFile(tmp + "/model.safetensors");
  weights[weights.size() - 1] ^= 1;
  ASSERT_TRUE(WriteFileAtomically(tmp + "/model.safetensors", weights).ok());
  const BlockHash changed = *ModelFingerprint(tmp);
  EXPECT_NE(changed, *demo);
  std::string config = *ReadFile(tmp + "/config.json");
  ASSERT_TRUE(WriteFileAtomically(tmp + "/config.json", config + " ").ok());
  EXPECT_NE(*ModelFingerprint(tmp), changed);

  CacheLayout layout;
  layout.block_size = 16;
  layout.num_layers = 2;
  layout.k_width = 64;
  layout.v_width = 64;
  EXPECT_EQ(layout.BlockBytes(), 4 * 16 * 2 * 128);
  const BlockHash root = CacheRoot(*demo, layout);
  layout.block_size = 32;
  EXPECT_NE(CacheRoot(*demo, layout), root);
  layout.block_size = 16;
  layout.extra = "gating=1";
  EXPECT_NE(CacheRoot(*demo, layout), root);
  layout.extra.clear();
  // A bf16 or FP8 cache's blocks are other bytes: other names, other sizes.
  layout.dtype = KvDType::kBf16;
  EXPECT_NE(CacheRoot(*demo, layout), root);
  EXPECT_EQ(layout.BlockBytes(), 2 * 16 * 2 * 128);
  const BlockHash bf16 = CacheRoot(*demo, layout);
  layout.dtype = KvDType::kF8E4M3;
  EXPECT_NE(CacheRoot(*demo, layout), bf16);
  EXPECT_EQ(layout.BlockBytes(), 16 * 2 * 128);
}

TEST(KvDTypeTest, FlagsPickTheStoredType) {
  EXPECT_EQ(*ParseKvCacheDType("auto", /*gpu=*/true), KvDType::kBf16);
  EXPECT_EQ(*ParseKvCacheDType("auto", /*gpu=*/false), KvDType::kF32);
  EXPECT_EQ(*ParseKvCacheDType("float32", true), KvDType::kF32);
  EXPECT_EQ(*ParseKvCacheDType("float32", false), KvDType::kF32);
  EXPECT_EQ(*ParseKvCacheDType("bfloat16", true), KvDType::kBf16);
  EXPECT_EQ(*ParseKvCacheDType("fp8", true), KvDType::kF8E4M3);
  EXPECT_EQ(*ParseKvCacheDType("fp8_e4m3", true), KvDType::kF8E4M3);
  // The CPU's cache is fp32 only; unknown names say what is accepted.
  const absl::Status cpu = ParseKvCacheDType("bfloat16", false).status();
  EXPECT_EQ(cpu.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(cpu.message().find("--device cuda"), std::string::npos) << cpu;
  const absl::Status bad = ParseKvCacheDType("fp8_e5m2", true).status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("auto, float32, bfloat16"), std::string::npos) << bad;
  EXPECT_EQ(KvDTypeName(KvDType::kBf16), "bf16");
  EXPECT_EQ(KvDTypeBytes(KvDType::kF8E4M3), 1);
}

}  // namespace
}  // namespace moemesh
