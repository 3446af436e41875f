#include "core/engine/kv_cache.h"

#include <set>

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
