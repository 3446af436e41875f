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
  EXPECT_EQ((*got)[1].data(), chain[1].bytes);
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

TEST(HostKvTierTest, AFetchedBlockOutlivesItsEviction) {
  const BlockHash root = HashBytes("m");
  HostKvTier tier(250);  // two blocks of 100 bytes
  const std::vector<KvTierBlock> chain = Chain(root, 3, 0);
  tier.Store(root, chain[0].hash, {chain[0]});
  std::vector<KvTierBlock> held = *tier.Fetch(root, {chain[0].hash});
  ASSERT_EQ(held.size(), 1u);
  EXPECT_TRUE(held[0].bytes.empty()) << "a view of the tier's memory, not a copy";
  tier.Store(root, chain[0].hash, {chain[1], chain[2]});  // evicts chain[0]
  EXPECT_EQ(tier.evictions(), 1);
  EXPECT_EQ(held[0].data(), chain[0].bytes);
}

// Plain memory standing in for a GPU router's page-locked arena.
HostArena PlainArena(int* calls) {
  return [calls](size_t bytes) -> absl::StatusOr<std::shared_ptr<void>> {
    ++*calls;
    return std::shared_ptr<void>(new char[bytes], [](void* p) { delete[] static_cast<char*>(p); });
  };
}

TEST(HostKvTierTest, AnArenaHoldsBlocksInSlotsAndReusesThem) {
  const BlockHash root = HashBytes("m");
  int calls = 0;
  absl::StatusOr<std::unique_ptr<HostKvTier>> tier = HostKvTier::WithArena(350, PlainArena(&calls));
  ASSERT_TRUE(tier.ok()) << tier.status();
  EXPECT_EQ(calls, 1);
  const std::vector<KvTierBlock> a = Chain(root, 3, 0), b = Chain(root, 3, 100);
  (*tier)->Store(root, a[0].hash, a);  // three slots of 100 bytes
  EXPECT_EQ((*tier)->blocks(), 3);
  std::vector<KvTierBlock> got = *(*tier)->Fetch(root, Names(a));
  ASSERT_EQ(got.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(got[i].data(), a[i].bytes) << i;
  got.clear();
  (*tier)->Store(root, b[0].hash, b);  // every slot reused
  EXPECT_EQ((*tier)->evictions(), 3);
  got = *(*tier)->Fetch(root, Names(b));
  ASSERT_EQ(got.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(got[i].data(), b[i].bytes) << i;
  EXPECT_TRUE((*tier)->Fetch(root, Names(a))->empty());
  (*tier)->Store(root, {}, Chain(root, 1, 500, 60));  // another size: not kept
  EXPECT_EQ((*tier)->blocks(), 3);
  EXPECT_EQ((*tier)->bytes(), 300);
}

TEST(HostKvTierTest, AnArenaSlotAFetchedBlockViewsIsNotOverwritten) {
  const BlockHash root = HashBytes("m");
  int calls = 0;
  std::unique_ptr<HostKvTier> tier = *HostKvTier::WithArena(200, PlainArena(&calls));
  const std::vector<KvTierBlock> a = Chain(root, 2, 0), b = Chain(root, 2, 100), c = Chain(root, 1, 200);
  tier->Store(root, a[0].hash, a);
  std::vector<KvTierBlock> held = *tier->Fetch(root, Names(a));
  ASSERT_EQ(held.size(), 2u);
  tier->Store(root, b[0].hash, b);  // both slots held: a's blocks go, b's are not kept
  EXPECT_EQ(held[0].data(), a[0].bytes);
  EXPECT_EQ(held[1].data(), a[1].bytes);
  EXPECT_TRUE(tier->Fetch(root, Names(b))->empty());
  held.pop_back();                  // a[1]'s slot is free again
  tier->Store(root, c[0].hash, c);
  EXPECT_EQ(tier->Fetch(root, Names(c))->size(), 1u);
  EXPECT_EQ(held[0].data(), a[0].bytes);
}

TEST(HostKvTierTest, AnArenaThatCannotBeHadIsAnError) {
  HostArena none = [](size_t) -> absl::StatusOr<std::shared_ptr<void>> {
    return absl::ResourceExhaustedError("no page-locked memory");
  };
  absl::StatusOr<std::unique_ptr<HostKvTier>> tier = HostKvTier::WithArena(1 << 20, none);
  EXPECT_EQ(tier.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(tier.status().message().find("no page-locked memory"), std::string::npos);
  EXPECT_EQ(HostKvTier::WithArena(0, none).status().code(), absl::StatusCode::kInvalidArgument);
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
