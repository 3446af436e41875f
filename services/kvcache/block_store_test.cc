#include "services/kvcache/block_store.h"

#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "rocksdb/db.h"

namespace moemesh {
namespace {

class BlockStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    options_.dir = absl::StrCat(::testing::TempDir(), "/block_store_",
                                ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(options_.dir);
    options_.min_free_bytes = 16 << 20;
  }

  std::unique_ptr<BlockStore> Open() {
    auto store = BlockStore::Open(options_);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(*store) : nullptr;
  }

  // A chain of `n` blocks of 4 tokens from root_, each of `bytes` bytes
  // filled with its index.
  std::vector<StoredBlock> Chain(int n, int first_token = 0, int bytes = 100) const {
    std::vector<StoredBlock> chain;
    BlockHash parent = root_;
    for (int i = 0; i < n; ++i) {
      StoredBlock b;
      b.parent = parent;
      for (int t = 0; t < 4; ++t) b.tokens.push_back(first_token + 4 * i + t);
      b.hash = ChainBlockHash(parent, b.tokens);
      b.data = std::string(bytes, static_cast<char>('a' + i % 26));
      parent = b.hash;
      chain.push_back(b);
    }
    return chain;
  }

  static std::vector<BlockHash> Names(const std::vector<StoredBlock>& chain) {
    std::vector<BlockHash> names;
    for (const StoredBlock& b : chain) names.push_back(b.hash);
    return names;
  }

  BlockStore::Options options_;
  const BlockHash root_ = HashBytes("model A");
};

TEST_F(BlockStoreTest, PutGetAndLongestPrefix) {
  auto store = Open();
  const std::vector<StoredBlock> chain = Chain(4);
  EXPECT_EQ(store->LongestPrefix(root_, Names(chain)), 0);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(store->Put(root_, chain[i]).ok());
  EXPECT_EQ(store->LongestPrefix(root_, Names(chain)), 3);
  EXPECT_EQ(store->LongestPrefix(HashBytes("model B"), Names(chain)), 0);  // another root holds nothing
  absl::StatusOr<StoredBlock> got = store->Get(root_, chain[1].hash);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->parent, chain[0].hash);
  EXPECT_EQ(got->tokens, chain[1].tokens);
  EXPECT_EQ(got->data, chain[1].data);
  EXPECT_EQ(store->Get(root_, chain[3].hash).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(store->Put(root_, chain[1]).ok());  // again: held already
  EXPECT_EQ(store->stats().blocks, 3);
}

TEST_F(BlockStoreTest, RefusesBlocksThatAreNotWhatTheyClaim) {
  auto store = Open();
  std::vector<StoredBlock> chain = Chain(3);
  StoredBlock wrong_name = chain[0];
  wrong_name.tokens[0] = 99;  // its hash no longer chains its tokens
  EXPECT_EQ(store->Put(root_, wrong_name).code(), absl::StatusCode::kInvalidArgument);
  // A chain of another model (root) cannot be filed under this one.
  EXPECT_EQ(store->Put(HashBytes("model B"), chain[0]).code(), absl::StatusCode::kFailedPrecondition);
  // Nor a block whose parent is not held.
  EXPECT_EQ(store->Put(root_, chain[1]).code(), absl::StatusCode::kFailedPrecondition);
  StoredBlock empty = chain[0];
  empty.data.clear();
  EXPECT_EQ(store->Put(root_, empty).code(), absl::StatusCode::kInvalidArgument);
  StoredBlock big = chain[0];
  big.data.assign(static_cast<size_t>(options_.max_block_bytes) + 1, 'x');
  EXPECT_EQ(store->Put(root_, big).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->stats().blocks, 0);  // nothing stored
}

TEST_F(BlockStoreTest, EvictsLeastRecentlyUsedPastCapacityAndKeepsOrderAcrossRestarts) {
  // Room for 4 blocks of about 190 bytes (key and value).
  options_.capacity_bytes = 4 * 200;
  const std::vector<StoredBlock> a = Chain(2, 0), b = Chain(2, 1000);
  {
    auto store = Open();
    for (const auto& blk : a) ASSERT_TRUE(store->Put(root_, blk).ok());
    for (const auto& blk : b) ASSERT_TRUE(store->Put(root_, blk).ok());
    EXPECT_EQ(store->stats().blocks, 4);
    ASSERT_TRUE(store->Get(root_, a[0].hash).ok());  // a[0] is now the most recently used
    ASSERT_TRUE(store->Get(root_, a[1].hash).ok());
  }
  auto store = Open();  // the order of use survives the restart
  EXPECT_EQ(store->stats().blocks, 4);
  const std::vector<StoredBlock> c = Chain(1, 2000);
  ASSERT_TRUE(store->Put(root_, c[0]).ok());
  EXPECT_EQ(store->stats().evictions, 1);
  EXPECT_EQ(store->LongestPrefix(root_, Names(a)), 2);
  EXPECT_EQ(store->LongestPrefix(root_, Names(b)), 0);  // b[0], the least recently used, went
  EXPECT_EQ(store->LongestPrefix(root_, {b[1].hash}), 1);
  EXPECT_LE(store->stats().block_bytes, options_.capacity_bytes);
}

TEST_F(BlockStoreTest, CorruptValueReadsAsDataLossAndIsDropped) {
  const std::vector<StoredBlock> chain = Chain(1);
  {
    auto store = Open();
    ASSERT_TRUE(store->Put(root_, chain[0]).ok());
  }
  {  // Flip one byte of the stored value, underneath the store.
    rocksdb::DB* raw = nullptr;
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    std::vector<rocksdb::ColumnFamilyDescriptor> families = {{rocksdb::kDefaultColumnFamilyName, {}},
                                                              {"blocks", {}}, {"index", {}}, {"sessions", {}}};
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::DBOptions(), options_.dir, families, &handles, &raw).ok());
    const std::string key = root_.Bytes() + chain[0].hash.Bytes();
    std::string value;
    ASSERT_TRUE(raw->Get({}, handles[1], key, &value).ok());
    value[value.size() - 1] ^= 0x10;
    ASSERT_TRUE(raw->Put({}, handles[1], key, value).ok());
    for (auto* h : handles) raw->DestroyColumnFamilyHandle(h);
    delete raw;
  }
  auto store = Open();
  EXPECT_EQ(store->Get(root_, chain[0].hash).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(store->stats().corrupt_reads, 1);
  EXPECT_EQ(store->stats().blocks, 0);
  EXPECT_EQ(store->Get(root_, chain[0].hash).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(store->Put(root_, chain[0]).ok());  // and can be stored again
  EXPECT_TRUE(store->Get(root_, chain[0].hash).ok());
}

TEST_F(BlockStoreTest, SessionsVersionListDeleteAndPersist) {
  {
    auto store = Open();
    SessionRecord r;
    r.id = "chat-1";
    r.root = root_;
    r.tokens = {1, 2, 3};
    absl::StatusOr<SessionRecord> w = store->PutSession(r, /*expected_version=*/0);
    ASSERT_TRUE(w.ok()) << w.status();
    EXPECT_EQ(w->version, 1);
    EXPECT_EQ(store->PutSession(r, 0).status().code(), absl::StatusCode::kAborted);  // exists already
    r.tokens = {1, 2, 3, 4, 5};
    EXPECT_EQ(store->PutSession(r, 7).status().code(), absl::StatusCode::kAborted);  // stale version
    w = store->PutSession(r, 1);
    ASSERT_TRUE(w.ok());
    EXPECT_EQ(w->version, 2);
    r.id = "chat-2";
    ASSERT_TRUE(store->PutSession(r).ok());
    r.id = "chat-3";
    ASSERT_TRUE(store->PutSession(r).ok());
    ASSERT_TRUE(store->DeleteSession("chat-3").ok());
    EXPECT_EQ(store->DeleteSession("chat-3").code(), absl::StatusCode::kNotFound);
  }
  auto store = Open();
  EXPECT_EQ(store->stats().sessions, 2);
  absl::StatusOr<SessionRecord> s = store->GetSession("chat-1");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->tokens, (std::vector<int>{1, 2, 3, 4, 5}));
  EXPECT_EQ(s->version, 2);
  EXPECT_EQ(s->root, root_);
  auto page = store->ListSessions("", 1);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->size(), 1u);
  EXPECT_EQ((*page)[0].id, "chat-1");
  page = store->ListSessions("chat-1", 10);
  ASSERT_EQ(page->size(), 1u);
  EXPECT_EQ((*page)[0].id, "chat-2");
  EXPECT_EQ(store->GetSession("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->GetSession("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->GetSession(std::string(300, 'x')).status().code(), absl::StatusCode::kInvalidArgument);
  SessionRecord huge;
  huge.id = "huge";
  huge.tokens.resize(static_cast<size_t>(options_.max_session_tokens) + 1);
  EXPECT_EQ(store->PutSession(huge).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->GetSession("huge").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(BlockStoreTest, SessionsExpireAfterTheirTtl) {
  options_.session_ttl = absl::Milliseconds(200);
  auto store = Open();
  SessionRecord r;
  r.id = "short";
  r.tokens = {1};
  ASSERT_TRUE(store->PutSession(r).ok());
  EXPECT_TRUE(store->GetSession("short").ok());
  EXPECT_EQ(store->SweepExpiredSessions(), 0);
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(store->GetSession("short").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(store->ListSessions("", 10)->empty());
  EXPECT_EQ(store->SweepExpiredSessions(), 1);
  EXPECT_EQ(store->stats().sessions, 0);
  // An expired session starts again at version 1.
  absl::StatusOr<SessionRecord> w = store->PutSession(r, 0);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->version, 1);
}

TEST_F(BlockStoreTest, BadOptionsAreRefused) {
  BlockStore::Options o;
  EXPECT_EQ(BlockStore::Open(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.dir = options_.dir;
  o.capacity_bytes = 0;
  EXPECT_EQ(BlockStore::Open(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.capacity_bytes = 1 << 20;
  o.dir = "/proc/no/such/place";
  EXPECT_EQ(BlockStore::Open(o).status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace moemesh
