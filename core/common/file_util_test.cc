#include "core/common/file_util.h"

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

TEST(FileUtilTest, JoinPathAddsOneSlash) {
  EXPECT_EQ(JoinPath("a", "b"), "a/b");
  EXPECT_EQ(JoinPath("a/", "b"), "a/b");
  EXPECT_EQ(JoinPath("", "b"), "b");
}

// Links that lead out of a model directory are refused; links within it,
// and a Hugging Face snapshot's links to its repository's blobs, are not.
TEST(FileUtilTest, ModelFilesMayNotLeadOutOfTheModelDirectory) {
  namespace fs = std::filesystem;
  const fs::path base = fs::path(::testing::TempDir()) / "model_file_path";
  fs::remove_all(base);
  const fs::path model = base / "model", secret = base / "secret.json";
  fs::create_directories(model);
  ASSERT_TRUE(WriteFileAtomically(secret.string(), "{}").ok());
  ASSERT_TRUE(WriteFileAtomically((model / "config.json").string(), "{}").ok());
  fs::create_symlink("config.json", model / "inside.json");
  fs::create_symlink(secret, model / "outside.json");
  fs::create_symlink("../secret.json", model / "dotdot.json");
  EXPECT_EQ(*ModelFilePath(model.string(), "config.json"), (model / "config.json").string());
  EXPECT_TRUE(ModelFilePath(model.string(), "inside.json").ok());
  EXPECT_TRUE(ModelFilePath(model.string(), "missing.json").ok());  // its reader says NOT_FOUND
  for (const char* name : {"outside.json", "dotdot.json"}) {
    absl::StatusOr<std::string> p = ModelFilePath(model.string(), name);
    EXPECT_EQ(p.status().code(), absl::StatusCode::kFailedPrecondition) << name;
    EXPECT_NE(p.status().message().find("outside the model directory"), std::string::npos) << p.status();
  }
  // A Hugging Face cache: snapshots/REV/FILE -> ../../blobs/HASH.
  const fs::path repo = base / "models--org--name", snapshot = repo / "snapshots" / "0123abc";
  fs::create_directories(repo / "blobs");
  fs::create_directories(snapshot);
  ASSERT_TRUE(WriteFileAtomically((repo / "blobs" / "f00d").string(), "{}").ok());
  fs::create_symlink("../../blobs/f00d", snapshot / "config.json");
  fs::create_symlink("../../../secret.json", snapshot / "tokenizer.json");
  EXPECT_TRUE(ModelFilePath(snapshot.string(), "config.json").ok());
  EXPECT_EQ(ModelFilePath(snapshot.string(), "tokenizer.json").status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace moemesh
