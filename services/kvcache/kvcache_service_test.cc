// The kvcache service over a real loopback socket.
#include "services/kvcache/kvcache_service.h"

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "services/common/server_util.h"
#include "services/kvcache/kvcache_metrics.h"
#include "services/kvcache/local_kvcache.h"

namespace moemesh {
namespace {

class KvCacheServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    BlockStore::Options o;
    o.dir = absl::StrCat(::testing::TempDir(), "/kvcache_service_",
                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    o.max_block_bytes = 1 << 20;
    o.min_free_bytes = 16 << 20;
    metrics_ = std::make_unique<KvCacheMetrics>(registry_);
    kv_ = std::make_unique<LocalKvCache>(o, metrics_.get());
    stub_ = v1::KvCacheService::NewStub(
        grpc::CreateCustomChannel(kv_->address(), grpc::InsecureChannelCredentials(), ClientChannelArguments()));
  }

  std::vector<v1::KvBlock> Chain(int n, int first_token = 0) const {
    std::vector<v1::KvBlock> chain;
    BlockHash parent = root_;
    for (int i = 0; i < n; ++i) {
      v1::KvBlock b;
      std::vector<int> tokens;
      for (int t = 0; t < 16; ++t) tokens.push_back(first_token + 16 * i + t);
      const BlockHash hash = ChainBlockHash(parent, tokens);
      b.set_hash(hash.Bytes());
      b.set_parent(parent.Bytes());
      b.mutable_tokens()->Assign(tokens.begin(), tokens.end());
      b.set_data(std::string(4096, static_cast<char>(i)));
      b.set_checksum(Checksum64(b.data()));
      parent = hash;
      chain.push_back(b);
    }
    return chain;
  }

  // Puts `blocks` in one stream; the status and the count stored.
  std::pair<grpc::Status, int> Put(const std::vector<v1::KvBlock>& blocks, const BlockHash& root) {
    grpc::ClientContext ctx;
    v1::PutBlocksResponse resp;
    auto writer = stub_->PutBlocks(&ctx, &resp);
    for (const v1::KvBlock& b : blocks) {
      v1::PutBlocksRequest req;
      req.set_root(root.Bytes());
      *req.add_blocks() = b;
      if (!writer->Write(req)) break;
    }
    writer->WritesDone();
    grpc::Status st = writer->Finish();
    return {st, resp.stored()};
  }

  int Lookup(const std::vector<v1::KvBlock>& chain) {
    grpc::ClientContext ctx;
    v1::LookupRequest req;
    req.set_root(root_.Bytes());
    for (const auto& b : chain) req.add_hashes(b.hash());
    v1::LookupResponse resp;
    EXPECT_TRUE(stub_->Lookup(&ctx, req, &resp).ok());
    return resp.held();
  }

  const BlockHash root_ = HashBytes("a model");
  prometheus::Registry registry_;
  std::unique_ptr<KvCacheMetrics> metrics_;
  std::unique_ptr<LocalKvCache> kv_;  // after the metrics it reports to
  std::unique_ptr<v1::KvCacheService::Stub> stub_;
};

TEST_F(KvCacheServiceTest, PutLookupGetRoundTrip) {
  const std::vector<v1::KvBlock> chain = Chain(5);
  auto [st, stored] = Put({chain.begin(), chain.begin() + 3}, root_);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(stored, 3);
  EXPECT_EQ(Lookup(chain), 3);

  grpc::ClientContext ctx;
  v1::GetBlocksRequest req;
  req.set_root(root_.Bytes());
  for (const auto& b : chain) req.add_hashes(b.hash());
  auto reader = stub_->GetBlocks(&ctx, req);
  v1::GetBlocksResponse resp;
  int n = 0;
  while (reader->Read(&resp)) {
    ASSERT_LT(n, 3);
    EXPECT_EQ(resp.block().hash(), chain[n].hash());
    EXPECT_EQ(resp.block().parent(), chain[n].parent());
    EXPECT_EQ(resp.block().data(), chain[n].data());
    EXPECT_EQ(resp.block().checksum(), chain[n].checksum());
    EXPECT_EQ(resp.block().tokens_size(), 16);
    ++n;
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(n, 3);  // stops at the first block not held

  grpc::ClientContext sctx;
  v1::KvCacheStats stats;
  ASSERT_TRUE(stub_->GetStats(&sctx, v1::GetStatsRequest(), &stats).ok());
  EXPECT_EQ(stats.blocks(), 3);
  EXPECT_GT(stats.block_bytes(), 3 * 4096);

  const std::string text = prometheus::TextSerializer().Serialize(registry_.Collect());
  EXPECT_NE(text.find("moemesh_kvcache_blocks 3"), std::string::npos) << text;
  EXPECT_NE(text.find("moemesh_kvcache_rpc_seconds_count{code=\"OK\",method=\"PutBlocks\"} 1"), std::string::npos)
      << text;
  EXPECT_NE(text.find("moemesh_kvcache_bytes_total{direction=\"out\"} 12288"), std::string::npos) << text;
}

TEST_F(KvCacheServiceTest, BadBlocksGetClearStatusesAndStoreNothingOfThemselves) {
  const std::vector<v1::KvBlock> chain = Chain(3);
  std::vector<v1::KvBlock> bad = {chain[0], chain[1]};
  bad[1].set_checksum(bad[1].checksum() + 1);  // data damaged in flight
  auto [st, stored] = Put(bad, root_);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_NE(st.error_message().find("block 1"), std::string::npos) << st.error_message();
  EXPECT_EQ(Lookup(chain), 1);  // the block before it is stored, not it

  v1::KvBlock short_hash = chain[1];
  short_hash.set_hash("abc");
  EXPECT_EQ(Put({short_hash}, root_).first.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::KvBlock renamed = chain[1];
  renamed.set_hash(chain[2].hash());
  EXPECT_EQ(Put({renamed}, root_).first.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // The chain of another model: its first block's parent is that model's root.
  EXPECT_EQ(Put({chain[0]}, HashBytes("another model")).first.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  v1::KvBlock oversize = chain[1];
  oversize.set_data(std::string((1 << 20) + 1, 'x'));
  oversize.set_checksum(Checksum64(oversize.data()));
  EXPECT_EQ(Put({oversize}, root_).first.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Lookup(chain), 1);

  grpc::ClientContext ctx;
  v1::LookupRequest req;
  req.set_root("short");
  v1::LookupResponse resp;
  EXPECT_EQ(stub_->Lookup(&ctx, req, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(KvCacheServiceTest, Sessions) {
  v1::PutSessionRequest put;
  put.set_session_id("s1");
  put.set_root(root_.Bytes());
  put.add_tokens(5);
  put.add_tokens(6);
  put.set_create_only(true);
  v1::Session s;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->PutSession(&ctx, put, &s).ok());
    EXPECT_EQ(s.version(), 1);
    EXPECT_EQ(s.token_count(), 2);
  }
  {
    grpc::ClientContext ctx;
    EXPECT_EQ(stub_->PutSession(&ctx, put, &s).error_code(), grpc::StatusCode::ABORTED);
  }
  put.set_create_only(false);
  put.set_expected_version(1);
  put.add_tokens(7);
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->PutSession(&ctx, put, &s).ok());
    EXPECT_EQ(s.version(), 2);
  }
  {
    grpc::ClientContext ctx;
    v1::GetSessionRequest get;
    get.set_session_id("s1");
    ASSERT_TRUE(stub_->GetSession(&ctx, get, &s).ok());
    EXPECT_EQ(s.tokens_size(), 3);
    EXPECT_EQ(s.root(), root_.Bytes());
  }
  {
    grpc::ClientContext ctx;
    v1::ListSessionsRequest list;
    v1::ListSessionsResponse resp;
    ASSERT_TRUE(stub_->ListSessions(&ctx, list, &resp).ok());
    ASSERT_EQ(resp.sessions_size(), 1);
    EXPECT_EQ(resp.sessions(0).token_count(), 3);
    EXPECT_EQ(resp.sessions(0).tokens_size(), 0);
  }
  {
    grpc::ClientContext ctx;
    v1::ListSessionsRequest list;
    list.set_limit(5000);
    v1::ListSessionsResponse resp;
    EXPECT_EQ(stub_->ListSessions(&ctx, list, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    grpc::ClientContext ctx;
    v1::DeleteSessionRequest del;
    del.set_session_id("unknown");
    v1::DeleteSessionResponse resp;
    EXPECT_EQ(stub_->DeleteSession(&ctx, del, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    v1::PutSessionRequest no_root;
    no_root.set_session_id("s2");
    EXPECT_EQ(stub_->PutSession(&ctx, no_root, &s).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
}

}  // namespace
}  // namespace moemesh
