#include "core/engine/kv_cache.h"

#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace moemesh {
namespace {

TEST(KvCacheTest, ReserveReleaseAndExhaustion) {
  KvCache cache(/*layers=*/2, /*k=*/3, /*v=*/3, /*block=*/4, /*blocks=*/5);
  KvSequence a, b;
  ASSERT_TRUE(cache.Reserve(&a, 9).ok());  // 3 blocks
  EXPECT_EQ(a.blocks.size(), 3u);
  EXPECT_EQ(cache.free_blocks(), 2);
  EXPECT_NEAR(cache.Usage(), 0.6, 1e-9);
  ASSERT_TRUE(cache.Reserve(&a, 12).ok());  // still 3 blocks
  EXPECT_EQ(cache.free_blocks(), 2);
  absl::Status st = cache.Reserve(&b, 13);  // needs 4
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(b.blocks.empty());           // nothing taken on failure
  EXPECT_EQ(cache.free_blocks(), 2);
  cache.Release(&a);
  EXPECT_EQ(cache.free_blocks(), 5);
  EXPECT_TRUE(cache.Reserve(&b, 13).ok());
}

TEST(KvCacheTest, RowsAreDistinctAcrossLayersPositionsAndSequences) {
  KvCache cache(2, 2, 2, 2, 4);
  KvSequence a, b;
  ASSERT_TRUE(cache.Reserve(&a, 3).ok());
  ASSERT_TRUE(cache.Reserve(&b, 2).ok());
  std::set<float*> rows;
  for (int layer = 0; layer < 2; ++layer) {
    for (int p = 0; p < 3; ++p) rows.insert(cache.Row(layer, a, p));
    for (int p = 0; p < 2; ++p) rows.insert(cache.Row(layer, b, p));
  }
  EXPECT_EQ(rows.size(), 10u);
  // Pages point at the same rows the writer used.
  std::vector<const float*> ptrs;
  KvPages pages = cache.Pages(1, a, &ptrs);
  EXPECT_EQ(pages.k_blocks[2 / 2] + (2 % 2) * pages.k_stride, cache.Row(1, a, 2));
  EXPECT_EQ(pages.v_offset, 2);
}

}  // namespace
}  // namespace moemesh

namespace moemesh {
namespace {

// Committed full blocks are shared by the next sequence that begins with
// the same tokens, stay cached once released, and give way to allocations
// only when no block is free, the tail of a prefix before its head.
TEST(KvCacheTest, PrefixBlocksAreSharedCachedAndEvicted) {
  KvCache cache(/*layers=*/1, /*k=*/2, /*v=*/2, /*block=*/4, /*blocks=*/6);
  const std::vector<int> t = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  KvSequence a;
  ASSERT_TRUE(cache.Reserve(&a, 10).ok());  // 3 blocks
  a.length = 10;
  cache.Commit(&a, t);  // the two full blocks; the third is partial
  EXPECT_EQ(a.block_hashes.size(), 2u);
  EXPECT_EQ(cache.Probe(t, 10).tokens, 8);
  EXPECT_EQ(cache.Probe(t, 10).idle_blocks, 0);  // `a` holds them
  EXPECT_EQ(cache.Probe(t, 7).tokens, 4);        // whole blocks within max_tokens
  EXPECT_EQ(cache.Probe({1, 2, 3, 4, 5, 6, 7, 0}, 8).tokens, 4);  // parts in the second block
  EXPECT_EQ(cache.Probe({0, 2, 3, 4, 5, 6, 7, 8}, 8).tokens, 0);
  KvSequence b;
  EXPECT_EQ(cache.Match(t, 9, &b), 8);
  EXPECT_EQ(b.length, 8);
  ASSERT_EQ(b.blocks.size(), 2u);
  EXPECT_EQ(b.blocks[0], a.blocks[0]);
  EXPECT_EQ(b.blocks[1], a.blocks[1]);
  EXPECT_EQ(cache.free_blocks(), 3);  // nothing new taken
  ASSERT_TRUE(cache.Reserve(&b, 12).ok());  // b's own third block
  EXPECT_NE(b.blocks[2], a.blocks[2]);
  cache.Release(&a);
  EXPECT_EQ(cache.free_blocks(), 3);  // a's partial block; b holds the shared ones
  cache.Release(&b);
  EXPECT_EQ(cache.free_blocks(), 6);
  EXPECT_EQ(cache.cached_blocks(), 2);
  EXPECT_EQ(cache.Probe(t, 10).idle_blocks, 2);
  KvSequence c, d;
  ASSERT_TRUE(cache.Reserve(&c, 16).ok());  // the four free blocks
  EXPECT_EQ(cache.cached_blocks(), 2);
  EXPECT_EQ(cache.evictions(), 0);
  ASSERT_TRUE(cache.Reserve(&d, 4).ok());  // evicts the prefix's second block
  EXPECT_EQ(cache.evictions(), 1);
  EXPECT_EQ(cache.Probe(t, 10).tokens, 4);
  ASSERT_TRUE(cache.Reserve(&d, 8).ok());
  EXPECT_EQ(cache.Probe(t, 10).tokens, 0);
  EXPECT_EQ(cache.Reserve(&d, 12).code(), absl::StatusCode::kResourceExhausted);
}

// A block whose prefix is cached already stays the sequence's own: the
// cache keeps one block per prefix, and releasing the duplicate frees it.
TEST(KvCacheTest, ADuplicatePrefixStaysPrivate) {
  KvCache cache(1, 2, 2, 4, 4);
  const std::vector<int> t = {1, 2, 3, 4};
  KvSequence a, b;
  ASSERT_TRUE(cache.Reserve(&a, 4).ok());
  ASSERT_TRUE(cache.Reserve(&b, 4).ok());
  a.length = b.length = 4;
  cache.Commit(&a, t);
  cache.Commit(&b, t);  // computed alongside, committed second
  cache.Release(&b);
  EXPECT_EQ(cache.cached_blocks(), 0);  // b's copy went back as free
  cache.Release(&a);
  EXPECT_EQ(cache.cached_blocks(), 1);
  KvSequence c;
  EXPECT_EQ(cache.Match(t, 4, &c), 4);
  EXPECT_EQ(cache.cached_blocks(), 0);  // held again
  EXPECT_EQ(cache.free_blocks(), 3);
}

// A sequence part-way through its prompt takes the blocks that continue it
// once another sequence has cached them; one with a partial block or
// unhashed blocks takes nothing.
TEST(KvCacheTest, MatchContinuesASequenceAlongItsTokens) {
  KvCache cache(1, 2, 2, 4, 8);
  const std::vector<int> t = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13};
  KvSequence a, b;
  ASSERT_TRUE(cache.Reserve(&a, 12).ok());
  a.length = 12;
  cache.Commit(&a, t);  // three blocks cached
  ASSERT_TRUE(cache.Reserve(&b, 4).ok());
  b.length = 4;
  EXPECT_EQ(cache.Match(t, 12, &b), 4);  // its block not hashed yet: nothing attached
  cache.Commit(&b, t);                   // a duplicate of a's first block, kept private
  EXPECT_EQ(cache.Match(t, 12, &b), 12);
  ASSERT_EQ(b.blocks.size(), 3u);
  EXPECT_NE(b.blocks[0], a.blocks[0]);
  EXPECT_EQ(b.blocks[1], a.blocks[1]);
  EXPECT_EQ(b.blocks[2], a.blocks[2]);
  ASSERT_TRUE(cache.Reserve(&b, 13).ok());
  b.length = 13;
  EXPECT_EQ(cache.Match(t, 13, &b), 13);  // a partial block: left as it is
  EXPECT_EQ(b.blocks.size(), 4u);
}

}  // namespace
}  // namespace moemesh
