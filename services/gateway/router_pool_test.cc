#include "services/gateway/router_pool.h"

#include <chrono>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/common/file_util.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

// Waits up to 5 s for the pool to hold `n` routers.
size_t Settle(const RouterPool& pool, size_t n) {
  for (int i = 0; i < 250 && pool.members()->addresses.size() != n; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return pool.members()->addresses.size();
}

// Routers found in a file (as at dns:/// in Kubernetes) come and go while
// the pool serves; a router that stays keeps its channel; requests chosen
// before a change keep the routers they were given.
TEST(RouterPoolTest, RoutersComeAndGoFromTheirSource) {
  const std::string list = ::testing::TempDir() + "/router_pool_routers";
  ASSERT_TRUE(WriteFileAtomically(list, "127.0.0.1:7001\n").ok());
  auto pool = RouterPool::Create("file:" + list, /*resolve_period_ms=*/10);
  ASSERT_TRUE(pool.ok()) << pool.status();
  const RouterPool::Choice before = (*pool)->Choose("");
  ASSERT_EQ(before.order, std::vector<int>{0});
  ASSERT_TRUE(WriteFileAtomically(list, "127.0.0.1:7003 127.0.0.1:7001 | 127.0.0.1:7002 # three\n").ok());
  ASSERT_EQ(Settle(**pool, 3), 3u);
  auto now = (*pool)->members();
  EXPECT_EQ(now->addresses, (std::vector<std::string>{"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"}));
  EXPECT_EQ(now->stubs[0], before.members->stubs[0]) << "a router that stays keeps its channel";
  std::set<int> first;
  for (int i = 0; i < 6; ++i) first.insert((*pool)->Choose("").order[0]);
  EXPECT_EQ(first, (std::set<int>{0, 1, 2})) << "round robin over all";
  EXPECT_EQ((*pool)->Choose("session-7").order.size(), 3u);
  ASSERT_TRUE(WriteFileAtomically(list, "127.0.0.1:7002\n").ok());
  ASSERT_EQ(Settle(**pool, 1), 1u);
  EXPECT_EQ(before.members->addresses.size(), 1u) << "the earlier choice keeps its routers";
  ASSERT_TRUE(WriteFileAtomically(list, "# none\n").ok());  // names nothing: the pool keeps what it has
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ((*pool)->members()->addresses, std::vector<std::string>{"127.0.0.1:7002"});
}

TEST(RouterPoolTest, ListsAndBadSources) {
  auto fixed = RouterPool::Create("a:1, b:2", 10);
  ASSERT_TRUE(fixed.ok());
  EXPECT_EQ((*fixed)->members()->addresses, (std::vector<std::string>{"a:1", "b:2"}));
  EXPECT_EQ(RouterPool::Create("dns:///no-port", 10).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RouterPool::Create("file:/nonexistent/routers", 10).status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace moemesh
