#include "core/common/file_util.h"

#include <cstdlib>

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

TEST(FileUtilTest, JoinPathAddsOneSlash) {
  EXPECT_EQ(JoinPath("a", "b"), "a/b");
  EXPECT_EQ(JoinPath("a/", "b"), "a/b");
  EXPECT_EQ(JoinPath("", "b"), "b");
}

}  // namespace
}  // namespace moemesh
