#include "services/gateway/hash_ring.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

std::vector<std::string> Nodes(int n) {
  std::vector<std::string> v;
  for (int i = 0; i < n; ++i) v.push_back(absl::StrCat("127.0.0.1:", 7000 + i));
  return v;
}

TEST(HashRingTest, OrderListsEveryNodeOnceHomeFirst) {
  HashRing ring(Nodes(5));
  for (int k = 0; k < 100; ++k) {
    std::vector<int> order = ring.Order(absl::StrCat("session-", k));
    ASSERT_EQ(order.size(), 5u);
    std::vector<int> sorted = order;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, (std::vector<int>{0, 1, 2, 3, 4}));
    EXPECT_EQ(order, ring.Order(absl::StrCat("session-", k)));  // stable
  }
  EXPECT_TRUE(HashRing({}).Order("x").empty());
}

TEST(HashRingTest, BalancesAndMovesFewKeysWhenANodeIsAdded) {
  const int kKeys = 20000;
  HashRing four(Nodes(4)), five(Nodes(5));
  std::map<int, int> load;
  int moved = 0;
  for (int k = 0; k < kKeys; ++k) {
    std::string key = absl::StrCat("user-", k, "-conversation");
    int a = four.Order(key)[0], b = five.Order(key)[0];
    ++load[a];
    if (a != b) {
      ++moved;
      EXPECT_EQ(b, 4) << "a key moved between old nodes";
    }
  }
  for (const auto& [node, n] : load) EXPECT_NEAR(n, kKeys / 4, kKeys / 4 * 0.15) << "node " << node;
  EXPECT_NEAR(moved, kKeys / 5, kKeys / 5 * 0.2);
}

TEST(HashRingTest, TheHashIsFixedAcrossProcesses) {
  // Gateways in different processes must agree, so the hash is not seeded.
  EXPECT_EQ(HashRing::Hash(""), HashRing::Hash(""));
  EXPECT_EQ(HashRing::Hash("session-1"), 10348509449063778181ull) << std::hex << HashRing::Hash("session-1");
}

}  // namespace
}  // namespace moemesh
