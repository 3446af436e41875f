#include "core/common/file_util.h"

#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>

#include "gtest/gtest.h"

namespace moemesh {
namespace {

TEST(FileUtilTest, WriteThenReadRoundTrips) {
  std::string path = JoinPath(::testing::TempDir(), "file_util_test.bin");
  std::string data("a\0b\xff", 4);
  ASSERT_TRUE(WriteFileAtomically(path, data).ok());
  auto read = ReadFile(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, data);
}

TEST(FileUtilTest, MissingFileIsNotFoundAndNamed) {
  auto read = ReadFile("/nonexistent/dir/x.json");
  EXPECT_EQ(read.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(read.status().message().find("/nonexistent/dir/x.json"), std::string::npos);
}

// Links are followed to regular files (Hugging Face's cache); a FIFO (which
// would block), a device (which would never end) or a directory is refused
// at once, directly or through a link.
TEST(FileUtilTest, OnlyRegularFilesAreRead) {
  const std::string dir = ::testing::TempDir() + "/file_util_regular";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  ASSERT_TRUE(WriteFileAtomically(dir + "/real.json", "{}").ok());
  std::filesystem::create_symlink(dir + "/real.json", dir + "/link.json");
  auto linked = ReadFile(dir + "/link.json");
  ASSERT_TRUE(linked.ok()) << linked.status();
  EXPECT_EQ(*linked, "{}");
  ASSERT_EQ(mkfifo((dir + "/fifo").c_str(), 0600), 0);
  std::filesystem::create_symlink("/dev/zero", dir + "/zero.json");
  for (const std::string& path : {dir + "/fifo", dir + "/zero.json", std::string("/dev/null"), dir}) {
    auto read = ReadFile(path);
    EXPECT_EQ(read.status().code(), absl::StatusCode::kFailedPrecondition) << path;
    EXPECT_NE(read.status().message().find(path), std::string::npos) << read.status();
  }
  // /proc's files say size 0 but have contents: read to the end.
  auto status = ReadFile("/proc/self/status");
  ASSERT_TRUE(status.ok());
  EXPECT_NE(status->find("VmRSS"), std::string::npos);
}

TEST(FileUtilTest, JoinPathAddsOneSlash) {
  EXPECT_EQ(JoinPath("a", "b"), "a/b");
  EXPECT_EQ(JoinPath("a/", "b"), "a/b");
  EXPECT_EQ(JoinPath("", "b"), "b");
}

}  // namespace
}  // namespace moemesh
