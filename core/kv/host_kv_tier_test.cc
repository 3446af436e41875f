#include "core/kv/host_kv_tier.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace moemesh {
namespace {

std::vector<KvTierBlock> Chain(const BlockHash& root, int n, int first_token, int bytes = 100) {
  std::vector<KvTierBlock> chain;
  BlockHash parent = root;
  for (int i = 0; i < n; ++i) {
    KvTierBlock b;
    b.parent = parent;
    b.tokens = {first_token + 2 * i, first_token + 2 * i + 1};
    b.hash = ChainBlockHash(parent, b.tokens);
    b.bytes = std::string(bytes, static_cast<char>('a' + i));
    parent = b.hash;
    chain.push_back(b);
  }
  return chain;
}

std::vector<BlockHash> Names(const std::vector<KvTierBlock>& chain) {
  std::vector<BlockHash> names;
  for (const auto& b : chain) names.push_back(b.hash);
  return names;
}

TEST(HostKvTierTest, FetchesTheLeadingRunHeldUnderItsRoot) {
  const BlockHash root = HashBytes("m");
  HostKvTier tier(1 << 20);
  const std::vector<KvTierBlock> chain = Chain(root, 4, 0);
  tier.Store(root, chain[0].hash, {chain[0], chain[1], chain[3]});
  absl::StatusOr<std::vector<KvTierBlock>> got = tier.Fetch(root, Names(chain));
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->size(), 2u);  // stops at the gap
  EXPECT_EQ((*got)[1].bytes, chain[1].bytes);
  EXPECT_EQ((*got)[1].tokens, chain[1].tokens);
  EXPECT_TRUE(tier.Fetch(HashBytes("other"), Names(chain))->empty());
  got = tier.Fetch(root, Names(chain), 1);  // from the second block
  ASSERT_EQ(got->size(), 1u);
  EXPECT_EQ((*got)[0].hash, chain[1].hash);
  EXPECT_TRUE(tier.Fetch(root, Names(chain), 4)->empty());
  EXPECT_EQ(tier.blocks(), 3);
  EXPECT_EQ(tier.bytes(), 300);
}

TEST(HostKvTierTest, DropsLeastRecentlyUsedPastCapacity) {
  const BlockHash root = HashBytes("m");
  HostKvTier tier(350);  // three blocks of 100 bytes
  const std::vector<KvTierBlock> a = Chain(root, 2, 0), b = Chain(root, 2, 100);
  tier.Store(root, a[0].hash, a);
  tier.Store(root, b[0].hash, {b[0]});
  ASSERT_EQ(tier.Fetch(root, {a[0].hash})->size(), 1u);  // a[0] now most recent
  tier.Store(root, b[0].hash, {b[1]});                    // evicts a[1]
  EXPECT_EQ(tier.evictions(), 1);
  EXPECT_EQ(tier.Fetch(root, Names(a))->size(), 1u);
  EXPECT_EQ(tier.Fetch(root, Names(b))->size(), 2u);
  tier.Store(root, {}, Chain(root, 1, 500, 400));  // larger than the whole tier: not kept
  EXPECT_EQ(tier.blocks(), 3);
}

class DownTier : public KvTier {
 public:
  absl::StatusOr<std::vector<KvTierBlock>> Fetch(const BlockHash&, absl::Span<const BlockHash>, size_t) override {
    return absl::UnavailableError("down");
  }
  void Store(const BlockHash&, const BlockHash&, std::vector<KvTierBlock> blocks) override { stored += blocks.size(); }
  size_t stored = 0;
};

TEST(KvTierChainTest, FetchesFromTheNearestThenBelowAndPromotes) {
  const BlockHash root = HashBytes("m");
  HostKvTier near(1 << 20), far(1 << 20);
  const std::vector<KvTierBlock> chain = Chain(root, 4, 0);
  near.Store(root, chain[0].hash, {chain[0]});
  far.Store(root, chain[0].hash, chain);
  KvTierChain tiers({&near, &far});
  absl::StatusOr<std::vector<KvTierBlock>> got = tiers.Fetch(root, Names(chain));
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ((*got)[i].hash, chain[i].hash);
  EXPECT_EQ(near.blocks(), 4);  // promoted
  EXPECT_EQ(tiers.Fetch(root, Names(chain), 2)->size(), 2u);

  const std::vector<KvTierBlock> other = Chain(root, 2, 100);
  tiers.Store(root, other[0].hash, other);
  EXPECT_EQ(near.blocks(), 6);
  EXPECT_EQ(far.blocks(), 6);

  DownTier down;
  KvTierChain broken({&down});
  EXPECT_EQ(broken.Fetch(root, Names(chain)).status().code(), absl::StatusCode::kUnavailable);
  KvTierChain half({&near, &down});  // the near tier answers; the error below does not matter
  EXPECT_EQ(half.Fetch(root, Names(chain))->size(), 4u);
}

}  // namespace
}  // namespace moemesh
