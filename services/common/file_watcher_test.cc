#include "services/common/file_watcher.h"

#include <atomic>
#include <chrono>
#include <thread>

#include "core/common/file_util.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

TEST(FileWatcherTest, CallsOnceAChangeIsSeenAndNotOtherwise) {
  const std::string path = ::testing::TempDir() + "/watched.json";
  ASSERT_TRUE(WriteFileAtomically(path, "one").ok());
  std::atomic<int> changes{0};
  FileWatcher w(path, absl::Milliseconds(20), [&] { ++changes; });
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  EXPECT_EQ(changes.load(), 0) << "an unchanged file";
  ASSERT_TRUE(WriteFileAtomically(path, "two, longer").ok());
  for (int i = 0; i < 200 && changes.load() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(changes.load(), 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(changes.load(), 1) << "one change, one call";
}

}  // namespace
}  // namespace moemesh
