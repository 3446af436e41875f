// The kvcache service as a router's lower tier, over a real loopback socket.
#include "services/kvcache_client/kvcache_tier.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "core/engine/engine.h"
#include "core/engine/scheduler.h"
#include "gtest/gtest.h"
#include "moemesh/v1/kvcache.pb.h"
#include "services/common/frame_socket.h"
#include "services/common/server_util.h"
#include "services/common/shared_memory.h"
#include "services/kvcache/block_store.h"
#include "services/kvcache/local_kvcache.h"

namespace moemesh {
namespace {

// How the blocks travel: over gRPC alone, through the service's raw data
// channel, or in memory shared on that channel (this host's service).
enum class Wire { kGrpc, kDataChannel, kSharedMemory };

class KvCacheTierTest : public ::testing::TestWithParam<Wire> {
 protected:
  void SetUp() override {
    std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::replace(name.begin(), name.end(), '/', '_');
    kv_ = std::make_unique<LocalKvCache>(absl::StrCat(::testing::TempDir(), "/kvcache_tier_", name),
                                         GetParam() != Wire::kGrpc);
    address_ = kv_->address();
  }

  std::unique_ptr<KvCacheTier> Tier(const std::string& address, int64_t shared_memory_bytes = int64_t{64} << 20) {
    KvCacheTier::Options o;
    o.addresses = {address};
    o.use_data_channel = GetParam() != Wire::kGrpc;
    o.shared_memory_bytes = GetParam() == Wire::kSharedMemory ? shared_memory_bytes : 0;
    auto tier = KvCacheTier::Create(o);
    EXPECT_TRUE(tier.ok()) << tier.status();
    return std::move(*tier);
  }

  std::unique_ptr<LocalKvCache> kv_;
  std::string address_;
};

std::vector<KvTierBlock> Chain(const BlockHash& root, int n) {
  std::vector<KvTierBlock> chain;
  BlockHash parent = root;
  for (int i = 0; i < n; ++i) {
    KvTierBlock b;
    b.parent = parent;
    b.tokens = {3 * i, 3 * i + 1, 3 * i + 2};
    b.hash = ChainBlockHash(parent, b.tokens);
    b.bytes = std::string(1000 + i, static_cast<char>(i));
    parent = b.hash;
    chain.push_back(b);
  }
  return chain;
}

TEST_P(KvCacheTierTest, StoresInTheBackgroundAndFetchesTheLeadingRun) {
  const BlockHash root = HashBytes("m");
  const std::vector<KvTierBlock> chain = Chain(root, 5);
  std::unique_ptr<KvCacheTier> tier = Tier(address_);
  tier->Store(root, chain[0].hash, {chain[0], chain[1]});
  tier->Store(root, chain[0].hash, {chain[2]});
  tier->Flush();
  EXPECT_EQ(tier->stats().stored_blocks, 3);
  EXPECT_EQ(tier->stats().shared_memory_blocks, GetParam() == Wire::kSharedMemory ? 3 : 0);
  std::vector<BlockHash> names;
  for (const auto& b : chain) names.push_back(b.hash);
  absl::StatusOr<std::vector<KvTierBlock>> got = tier->Fetch(root, names);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ((*got)[i].data(), chain[i].bytes);
    EXPECT_EQ((*got)[i].tokens, chain[i].tokens);
    EXPECT_EQ((*got)[i].parent, chain[i].parent);
  }
  EXPECT_EQ(tier->stats().shared_memory_blocks, GetParam() == Wire::kSharedMemory ? 6 : 0);
  // From the middle of a chain, as a router whose own cache holds the head asks.
  got = tier->Fetch(root, names, 1);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->size(), 2u);
  // A chain whose head is missing is refused by the service, and counted.
  tier->Store(root, chain[0].hash, {chain[4]});
  tier->Flush();
  EXPECT_EQ(tier->stats().store_errors, 1);
}

TEST_P(KvCacheTierTest, AServiceThatIsDownFailsFetchesFastAndDropsStores) {
  kv_->Shutdown();
  std::unique_ptr<KvCacheTier> tier = Tier(address_);
  const BlockHash root = HashBytes("m");
  const std::vector<KvTierBlock> chain = Chain(root, 2);
  const absl::Time start = absl::Now();
  absl::StatusOr<std::vector<KvTierBlock>> got = tier->Fetch(root, {chain[0].hash});
  EXPECT_FALSE(got.ok());
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));  // bounded by the fetch timeout
  tier->Store(root, chain[0].hash, chain);
  tier->Flush();
  EXPECT_EQ(tier->stats().fetch_errors, 1);
  EXPECT_EQ(tier->stats().store_errors, 1);
}

// Sequences spread over two replicas by their first block; losing one
// replica loses its sequences (a fetch error: the router computes), not
// the other's.
TEST(KvCacheTierReplicasTest, SequencesSpreadOverReplicasAndSurviveTheLossOfOne) {
  LocalKvCache replicas[2] = {LocalKvCache(::testing::TempDir() + "/kvcache_replica_0"),
                              LocalKvCache(::testing::TempDir() + "/kvcache_replica_1")};
  KvCacheTier::Options o;
  o.addresses = {replicas[0].address(), replicas[1].address()};
  std::unique_ptr<KvCacheTier> tier = std::move(*KvCacheTier::Create(o));
  // 16 sequences of 3 blocks, each with its own first block.
  std::vector<std::vector<KvTierBlock>> seqs;
  int on[2] = {0, 0};
  for (int s = 0; s < 16; ++s) {
    seqs.push_back(Chain(HashBytes("m"), 3));
    for (KvTierBlock& b : seqs.back()) b.tokens[0] += 1000 * (s + 1);
    BlockHash parent = HashBytes("m");
    for (KvTierBlock& b : seqs.back()) {  // rename after the token change
      b.parent = parent;
      b.hash = ChainBlockHash(parent, b.tokens);
      parent = b.hash;
    }
    ++on[tier->ReplicaOf(seqs.back()[0].hash)];
    tier->Store(HashBytes("m"), seqs.back()[0].hash, seqs.back());
  }
  tier->Flush();
  EXPECT_EQ(tier->stats().stored_blocks, 48);
  EXPECT_GT(on[0], 0);
  EXPECT_GT(on[1], 0);
  EXPECT_EQ(replicas[0].store()->stats().blocks, 3 * on[0]);
  EXPECT_EQ(replicas[1].store()->stats().blocks, 3 * on[1]);
  auto names = [](const std::vector<KvTierBlock>& seq) {
    std::vector<BlockHash> n;
    for (const auto& b : seq) n.push_back(b.hash);
    return n;
  };
  for (const auto& seq : seqs) EXPECT_EQ(tier->Fetch(HashBytes("m"), names(seq), 1)->size(), 2u);

  replicas[1].Shutdown();
  int fetched = 0, failed = 0;
  for (const auto& seq : seqs) {
    absl::StatusOr<std::vector<KvTierBlock>> got = tier->Fetch(HashBytes("m"), names(seq));
    if (tier->ReplicaOf(seq[0].hash) == 1) {
      EXPECT_FALSE(got.ok());
      ++failed;
    } else {
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(got->size(), 3u);
      ++fetched;
    }
  }
  EXPECT_EQ(fetched, on[0]);
  EXPECT_EQ(failed, on[1]);
}

// A conversation's second turn on a new engine (a router restarted) over
// the kvcache service gives exactly the tokens and log probabilities of
// computing it, its first turn's blocks fetched from the service.
TEST_P(KvCacheTierTest, SecondTurnAfterARestartEqualsComputing) {
  for (const std::string name : {"mixtral", "mixtral_sliding", "deepseek_v3", "deepseek_v3_nolora", "qwen2_moe",
                                 "qwen3_moe", "olmoe", "olmoe_dynamic"}) {
    const std::string model = "tests/fixtures/" + name;
    SCOPED_TRACE(model);
    std::shared_ptr<KvCacheTier> tier = Tier(address_);
    GenerateParams p;
    p.sampling.temperature = 0;
    p.max_new_tokens = 6;
    p.logprobs = 2;
    p.ignore_eos = true;
    auto serve = [&](const std::vector<int>& prompt, bool tiered, int64_t* hits) {
      EngineOptions o;
      o.kv_block_size = 4;
      if (tiered) o.kv_tier = tier;
      auto engine = Engine::Create(model, o);
      EXPECT_TRUE(engine.ok()) << engine.status();
      std::unique_ptr<Scheduler> sched = (*engine)->NewScheduler(4, 4096);
      std::vector<StepEvent> events;
      EXPECT_TRUE(sched->Add(prompt, p, [&](const StepEvent& ev) { events.push_back(ev); }).ok());
      for (int steps = 0; !sched->idle() && steps < 200; ++steps) {
        EXPECT_TRUE(sched->Step().ok());
        *hits += sched->last_step().tier_hit_tokens;
      }
      tier->Flush();
      return events;
    };
    std::mt19937 rng(9);
    std::vector<int> prompt(21);
    for (int& t : prompt) t = static_cast<int>(rng() % 256);
    int64_t hits = 0, none = 0;
    for (const StepEvent& ev : serve(prompt, true, &hits)) prompt.push_back(ev.token);
    prompt.insert(prompt.end(), {5, 6, 7});
    const std::vector<StepEvent> restarted = serve(prompt, true, &hits), computed = serve(prompt, false, &none);
    // 21 + 5 computed positions: 6 blocks of 4 (none with dynamic rope,
    // where prefix caching is off).
    EXPECT_EQ(hits, name == std::string("olmoe_dynamic") ? 0 : 24);
    ASSERT_EQ(restarted.size(), computed.size());
    for (size_t t = 0; t < computed.size(); ++t) {
      ASSERT_TRUE(restarted[t].error.ok()) << restarted[t].error;
      EXPECT_EQ(restarted[t].token, computed[t].token) << "token " << t;
      EXPECT_NEAR(restarted[t].logprob, computed[t].logprob, 1e-4) << "token " << t;
    }
  }
}

// Shared memory smaller than a call's blocks: those that fit go in it, the
// rest through the socket, both ways, and all arrive whole.
TEST_P(KvCacheTierTest, BlocksPastTheSharedMemoryGoThroughTheSocket) {
  if (GetParam() != Wire::kSharedMemory) GTEST_SKIP() << "shared memory only";
  const BlockHash root = HashBytes("m");
  const std::vector<KvTierBlock> chain = Chain(root, 6);  // 1000 to 1005 bytes each
  std::unique_ptr<KvCacheTier> tier = Tier(address_, /*shared_memory_bytes=*/2500);
  tier->Store(root, chain[0].hash, chain);
  tier->Flush();
  EXPECT_EQ(tier->stats().stored_blocks, 6);
  EXPECT_EQ(tier->stats().shared_memory_blocks, 2);
  std::vector<BlockHash> names;
  for (const auto& b : chain) names.push_back(b.hash);
  for (int round = 0; round < 2; ++round) {  // the second call reuses the memory from its start
    absl::StatusOr<std::vector<KvTierBlock>> got = tier->Fetch(root, names);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size(), 6u);
    for (size_t i = 0; i < 6; ++i) EXPECT_EQ((*got)[i].data(), chain[i].bytes) << i;
    // The first two came in the shared memory and stay there (pinned), the
    // rest as frame payload.
    EXPECT_TRUE((*got)[0].pin && (*got)[1].pin && !(*got)[2].pin);
  }
  EXPECT_EQ(tier->stats().shared_memory_blocks, 6);

  // Rows still held pin their memory: a fetch meanwhile takes other memory
  // and leaves them as they are; held past the tier's end, they stay
  // readable; Own() copies them out.
  absl::StatusOr<std::vector<KvTierBlock>> held = tier->Fetch(root, names);
  ASSERT_TRUE(held.ok());
  absl::StatusOr<std::vector<KvTierBlock>> other = tier->Fetch(root, {names[0], names[1]});
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE((*other)[0].pin && (*other)[0].pin != (*held)[0].pin);
  // At most four connections' memory is pinned: the fifth fetch held at
  // once copies its rows out.
  std::vector<std::vector<KvTierBlock>> more;
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<std::vector<KvTierBlock>> got = tier->Fetch(root, {names[0], names[1]});
    ASSERT_TRUE(got.ok());
    EXPECT_EQ((*got)[0].pin != nullptr, i < 2) << i;
    EXPECT_EQ((*got)[0].data(), chain[0].bytes);
    more.push_back(std::move(*got));
  }
  tier.reset();
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ((*held)[i].data(), chain[i].bytes) << i;
  KvTierBlock owned = (*held)[0];
  owned.Own();
  held->clear();
  EXPECT_FALSE(owned.pin);
  EXPECT_EQ(owned.bytes, chain[0].bytes);
}

INSTANTIATE_TEST_SUITE_P(Wire, KvCacheTierTest,
                         ::testing::Values(Wire::kGrpc, Wire::kDataChannel, Wire::kSharedMemory),
                         [](const ::testing::TestParamInfo<Wire>& i) {
                           return std::string(i.param == Wire::kGrpc          ? "Grpc"
                                              : i.param == Wire::kDataChannel ? "DataChannel"
                                                                              : "SharedMemory");
                         });

// Frames that are not what the data channel carries are answered with the
// reason and store nothing; the connection serves on.
TEST(KvCacheDataChannelTest, BadFramesAreRefusedAndNothingIsStored) {
  LocalKvCache kv(::testing::TempDir() + "/kvcache_data_channel");
  ASSERT_GT(kv.data_port(), 0);
  auto socket = FrameSocket::Connect("127.0.0.1", kv.data_port());
  ASSERT_TRUE(socket.ok()) << socket.status();
  const BlockHash root = HashBytes("m");
  const std::vector<KvTierBlock> chain = Chain(root, 2);
  auto exchange = [&](const v1::KvFrame& request, const std::vector<iovec>& payload) {
    v1::KvFrame answer;
    std::vector<char> bytes;
    EXPECT_TRUE((*socket)->Send(request, payload).ok());
    EXPECT_TRUE((*socket)->Receive(&answer, &bytes).ok());
    EXPECT_TRUE(answer.done());
    return answer;
  };
  v1::KvFrame neither;
  EXPECT_EQ(exchange(neither, {}).error_code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  v1::KvFrame put;
  put.mutable_put()->set_root(root.Bytes());
  v1::KvBlock* b = put.mutable_put()->add_blocks();
  b->set_hash(chain[0].hash.Bytes());
  b->set_parent(root.Bytes());
  b->mutable_tokens()->Assign(chain[0].tokens.begin(), chain[0].tokens.end());
  b->set_checksum(Checksum64(chain[0].bytes));
  std::string data = chain[0].bytes;
  iovec bytes{data.data(), data.size()};
  put.add_data_sizes(data.size() + 1);  // more than the payload holds
  v1::KvFrame answer = exchange(put, {bytes});
  EXPECT_EQ(answer.error_code(), static_cast<int>(absl::StatusCode::kInvalidArgument)) << answer.error_message();
  EXPECT_EQ(answer.stored(), 0);
  put.set_data_sizes(0, data.size());
  data[0] ^= 1;  // no longer what its checksum says
  answer = exchange(put, {bytes});
  EXPECT_EQ(answer.error_code(), static_cast<int>(absl::StatusCode::kDataLoss)) << answer.error_message();
  EXPECT_EQ(kv.store()->stats().blocks, 0);
  data[0] ^= 1;
  answer = exchange(put, {bytes});
  EXPECT_EQ(answer.error_code(), 0) << answer.error_message();
  EXPECT_EQ(answer.stored(), 1);
  EXPECT_EQ(kv.store()->stats().blocks, 1);

  // Shared memory: offsets on a connection that set none up, names that
  // are not the mesh's, sizes out of bounds, offsets past its end.
  v1::KvFrame second = put;
  *second.mutable_put()->mutable_blocks(0) = *b;
  v1::KvBlock* b1 = second.mutable_put()->mutable_blocks(0);
  b1->set_hash(chain[1].hash.Bytes());
  b1->set_parent(chain[0].hash.Bytes());
  b1->mutable_tokens()->Assign(chain[1].tokens.begin(), chain[1].tokens.end());
  b1->set_checksum(Checksum64(chain[1].bytes));
  second.set_data_sizes(0, chain[1].bytes.size());
  second.add_shm_offsets(0);
  answer = exchange(second, {});
  EXPECT_EQ(answer.error_code(), static_cast<int>(absl::StatusCode::kFailedPrecondition)) << answer.error_message();
  v1::KvFrame setup;
  setup.mutable_shm_setup()->set_name("/etc/passwd");
  setup.mutable_shm_setup()->set_size(4096);
  EXPECT_EQ(exchange(setup, {}).error_code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  auto shm = SharedMemory::Create(4096);
  ASSERT_TRUE(shm.ok()) << shm.status();
  setup.mutable_shm_setup()->set_name((*shm)->name());
  setup.mutable_shm_setup()->set_size(uint64_t{2} << 30);
  EXPECT_EQ(exchange(setup, {}).error_code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  setup.mutable_shm_setup()->set_size(4096);
  answer = exchange(setup, {});
  ASSERT_EQ(answer.error_code(), 0) << answer.error_message();
  std::memcpy((*shm)->data() + 3000, chain[1].bytes.data(), chain[1].bytes.size() - 1000);
  second.set_shm_offsets(0, 3500);  // 1001 bytes from 3500: past 4096
  answer = exchange(second, {});
  EXPECT_EQ(answer.error_code(), static_cast<int>(absl::StatusCode::kInvalidArgument)) << answer.error_message();
  EXPECT_EQ(kv.store()->stats().blocks, 1);
  std::memcpy((*shm)->data() + 3000, chain[1].bytes.data(), chain[1].bytes.size());
  second.set_shm_offsets(0, 3000);
  answer = exchange(second, {});
  EXPECT_EQ(answer.error_code(), 0) << answer.error_message();
  EXPECT_EQ(answer.stored(), 1);
  EXPECT_EQ(kv.store()->stats().blocks, 2);
}

}  // namespace
}  // namespace moemesh
