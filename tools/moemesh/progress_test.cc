#include "tools/moemesh/progress.h"

#include <filesystem>
#include <regex>
#include <sstream>

#include "absl/strings/match.h"
#include "core/common/file_util.h"
#include "core/model/safetensors.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

TEST(ProgressTest, FormatsBytes) {
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(999), "999 B");
  EXPECT_EQ(FormatBytes(387400), "387.4 kB");
  EXPECT_EQ(FormatBytes(999960), "1.0 MB");
  EXPECT_EQ(FormatBytes(12'400'000'000ull), "12.4 GB");
  EXPECT_EQ(FormatBytes(3'000'000'000'000'000ull), "3000.0 TB");
}

TEST(ProgressTest, WeightFilesAreTheCheckpointsShards) {
  // tests/fixtures/olmoe also holds reference.safetensors, which is not a weight file.
  EXPECT_EQ(WeightFiles("tests/fixtures/olmoe"), std::vector<std::string>{"tests/fixtures/olmoe/model.safetensors"});
  EXPECT_EQ(WeightFileBytes("tests/fixtures/olmoe"),
            std::filesystem::file_size("tests/fixtures/olmoe/model.safetensors"));
  EXPECT_EQ(WeightFileBytes("/nonexistent"), 0u);
  // Shards named by an index, each counted once.
  const std::string dir = JoinPath(::testing::TempDir(), "sharded");
  std::filesystem::create_directories(dir);
  ASSERT_TRUE(WriteFileAtomically(JoinPath(dir, "model.safetensors.index.json"),
                                  R"({"weight_map": {"a": "one.safetensors", "b": "two.safetensors",
                                                     "c": "one.safetensors"}})")
                  .ok());
  ASSERT_TRUE(WriteFileAtomically(JoinPath(dir, "one.safetensors"), std::string(1000, 'x')).ok());
  ASSERT_TRUE(WriteFileAtomically(JoinPath(dir, "two.safetensors"), std::string(234, 'x')).ok());
  EXPECT_EQ(WeightFiles(dir).size(), 2u);
  EXPECT_EQ(WeightFileBytes(dir), 1234u);
}

TEST(ProgressTest, MappedWeightBytesCountsWhatThisProcessRead) {
  EXPECT_EQ(MappedWeightBytes("tests/fixtures/mixtral"), 0u);
  auto f = SafetensorsFile::Open("tests/fixtures/mixtral/model.safetensors");
  ASSERT_TRUE(f.ok()) << f.status();
  uint64_t sum = 0;
  for (const auto& [name, t] : (*f)->tensors()) {
    const auto* p = static_cast<const unsigned char*>(t.data);
    for (size_t i = 0; i < t.nbytes; ++i) sum += p[i];  // fault every page in
  }
  EXPECT_GT(sum, 0u);
  const uint64_t file = WeightFileBytes("tests/fixtures/mixtral");
  const uint64_t mapped = MappedWeightBytes("tests/fixtures/mixtral");
  EXPECT_GE(mapped + 4096, file);  // the last page may be partial
  EXPECT_LE(mapped, file + 4096);
}

TEST(ProgressTest, StatusLineRedrawsOnATerminalOnly) {
  std::ostringstream plain;
  {
    StatusLine s(ProgressOutput{&plain, false});
    s.Set("working");
    s.Print("a line");
    s.Clear();
  }
  EXPECT_EQ(plain.str(), "a line\n");

  std::ostringstream tty;
  {
    StatusLine s(ProgressOutput{&tty, true, 12});
    s.Set("working hard, 5s");  // cut to the terminal's width
    s.Print("a line");
  }  // cleared
  EXPECT_EQ(tty.str(), "\r\033[Kworking har\r\033[Ka line\nworking har\r\033[K");

  StatusLine quiet(ProgressOutput{});
  quiet.Set("x");
  quiet.Print("y");  // no stream: nothing, and no crash
}

TEST(ProgressTest, LoadingTheEngineIsReported) {
  std::ostringstream plain;
  auto engine = CreateEngineWithProgress("tests/fixtures/olmoe", {}, nullptr, ProgressOutput{&plain, false});
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_TRUE(std::regex_match(plain.str(), std::regex("loading model tests/fixtures/olmoe \\(387\\.4 kB of weights\\)"
                                                       "\\.\\.\\.\nloaded in [0-9]+\\.[0-9]s\n")))
      << plain.str();

  std::ostringstream tty;
  engine = CreateEngineWithProgress("tests/fixtures/olmoe", {}, nullptr, ProgressOutput{&tty, true, 200});
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ(tty.str().rfind("\r\033[Kloading model tests/fixtures/olmoe: ", 0), 0u) << tty.str();
  EXPECT_TRUE(absl::StrContains(tty.str(), " of 387.4 kB")) << tty.str();
  EXPECT_TRUE(std::regex_search(tty.str(), std::regex("\r\033\\[Kloaded model tests/fixtures/olmoe \\(387\\.4 kB of "
                                                      "weights\\) in [0-9]+\\.[0-9]s\n$")))
      << tty.str();

  // A failure prints no "loaded"; the caller reports the error.
  std::ostringstream failed;
  EXPECT_FALSE(CreateEngineWithProgress("/nonexistent", {}, nullptr, ProgressOutput{&failed, false}).ok());
  EXPECT_FALSE(absl::StrContains(failed.str(), "loaded")) << failed.str();
}

}  // namespace
}  // namespace moemesh
