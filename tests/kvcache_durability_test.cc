// The kvcache service as a process: what it acknowledges survives SIGKILL,
// nothing comes back half-written, and a full disk stops writes but not
// reads, until space returns.
//
//   kvcache_durability_test MOEMESH_KVCACHE_BIN
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "core/common/subprocess.h"
#include "core/kv/block_hash.h"
#include "gtest/gtest.h"
#include "moemesh/v1/kvcache.grpc.pb.h"
#include "services/common/server_util.h"

namespace moemesh {
namespace {

std::string g_kvcache;

// A running moemesh-kvcache and a client of it.
class Service {
 public:
  // `wrapper` runs before the binary (e.g. a shell that mounts the store).
  explicit Service(const std::vector<std::string>& argv) {
    auto p = Subprocess::Start(argv);
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return;
    process_ = std::move(*p);
    absl::StatusOr<std::string> addr = process_->WaitForLine("listening on ", absl::Seconds(30));
    EXPECT_TRUE(addr.ok()) << addr.status();
    if (!addr.ok()) return;
    process_->ForwardOutput(-1);
    stub_ = v1::KvCacheService::NewStub(
        grpc::CreateCustomChannel(*addr, grpc::InsecureChannelCredentials(), ClientChannelArguments()));
  }

  bool ok() const { return stub_ != nullptr; }
  v1::KvCacheService::Stub* stub() { return stub_.get(); }
  Subprocess* process() { return process_.get(); }

 private:
  std::unique_ptr<Subprocess> process_;
  std::unique_ptr<v1::KvCacheService::Stub> stub_;
};

std::vector<std::string> Argv(const std::string& dir) {
  return {g_kvcache, "--dir=" + dir, "--port=0", "--metrics-port=-1", "--min-free-mb=16"};
}

const BlockHash kRoot = HashBytes("kvcache_durability_test model");

// Block `i` of chain `c`: 16 tokens, `bytes` bytes drawn from (c, i).
v1::KvBlock MakeBlock(int c, int i, const BlockHash& parent, int bytes = 8192) {
  std::vector<int> tokens;
  for (int t = 0; t < 16; ++t) tokens.push_back(c * 100000 + i * 16 + t);
  v1::KvBlock b;
  b.set_hash(ChainBlockHash(parent, tokens).Bytes());
  b.set_parent(parent.Bytes());
  b.mutable_tokens()->Assign(tokens.begin(), tokens.end());
  std::mt19937 rng(c * 7919 + i);
  std::string data(bytes, '\0');
  for (char& ch : data) ch = static_cast<char>(rng());
  b.set_data(data);
  b.set_checksum(Checksum64(data));
  return b;
}

grpc::Status PutOne(v1::KvCacheService::Stub* stub, const v1::KvBlock& b) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::PutBlocksResponse resp;
  auto w = stub->PutBlocks(&ctx, &resp);
  v1::PutBlocksRequest req;
  req.set_root(kRoot.Bytes());
  *req.add_blocks() = b;
  w->Write(req);
  w->WritesDone();
  return w->Finish();
}

// The blocks of `hashes` the service returns, in order.
std::vector<v1::KvBlock> GetChain(v1::KvCacheService::Stub* stub, const std::vector<std::string>& hashes,
                                  grpc::Status* status) {
  grpc::ClientContext ctx;
  v1::GetBlocksRequest req;
  req.set_root(kRoot.Bytes());
  for (const auto& h : hashes) req.add_hashes(h);
  auto r = stub->GetBlocks(&ctx, req);
  std::vector<v1::KvBlock> out;
  v1::GetBlocksResponse resp;
  while (r->Read(&resp)) out.push_back(resp.block());
  *status = r->Finish();
  return out;
}

// A writer puts chains of blocks and rewrites sessions while the service
// is SIGKILLed at a random moment, 20 times over one store. After each
// restart, every acknowledged block reads back whole and with its checksum,
// every acknowledged session write (or a later one) is there, and what was
// in flight is either whole or absent.
TEST(KvCacheDurabilityTest, AcknowledgedWritesSurviveSigkill) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "/kvcache_crash");
  std::filesystem::remove_all(dir);
  std::mt19937 rng(20261206);
  struct Chain {
    std::vector<v1::KvBlock> blocks;  // attempted, in order
    int acked = 0;
  };
  std::vector<Chain> chains;
  struct SessionState {
    int64_t acked_version = 0;
    std::vector<int> acked_tokens, attempted_tokens;
  };
  std::map<std::string, SessionState> sessions;

  for (int round = 0; round < 20; ++round) {
    Service service(Argv(dir));
    ASSERT_TRUE(service.ok());
    // What earlier rounds were acknowledged must all be there.
    for (size_t c = 0; c < chains.size(); ++c) {
      std::vector<std::string> hashes;
      for (const auto& b : chains[c].blocks) hashes.push_back(b.hash());
      grpc::Status st;
      std::vector<v1::KvBlock> got = GetChain(service.stub(), hashes, &st);
      ASSERT_TRUE(st.ok()) << "round " << round << " chain " << c << ": " << st.error_message();
      ASSERT_GE(static_cast<int>(got.size()), chains[c].acked) << "round " << round << " chain " << c;
      for (size_t i = 0; i < got.size(); ++i) {
        EXPECT_EQ(got[i].data(), chains[c].blocks[i].data());
        EXPECT_EQ(got[i].checksum(), Checksum64(got[i].data()));
      }
    }
    for (auto& [id, s] : sessions) {
      grpc::ClientContext ctx;
      v1::GetSessionRequest req;
      req.set_session_id(id);
      v1::Session got;
      grpc::Status st = service.stub()->GetSession(&ctx, req, &got);
      if (s.acked_version == 0 && st.error_code() == grpc::StatusCode::NOT_FOUND) continue;
      ASSERT_TRUE(st.ok()) << id << ": " << st.error_message();
      ASSERT_GE(got.version(), s.acked_version) << id;
      const std::vector<int> tokens(got.tokens().begin(), got.tokens().end());
      if (got.version() == s.acked_version) {
        EXPECT_EQ(tokens, s.acked_tokens) << id;
      } else {  // the write in flight at the kill landed
        EXPECT_EQ(tokens, s.attempted_tokens) << id;
        s.acked_version = got.version();
        s.acked_tokens = tokens;
      }
    }

    // Write until killed.
    const int c = static_cast<int>(chains.size());
    chains.push_back({});
    std::atomic<bool> stop{false};
    std::thread writer([&] {
      BlockHash parent = kRoot;
      const std::string id = absl::StrCat("session-", c % 3);
      SessionState& s = sessions[id];
      for (int i = 0; !stop.load(); ++i) {
        v1::KvBlock b = MakeBlock(c, i, parent);
        chains[c].blocks.push_back(b);
        if (!PutOne(service.stub(), b).ok()) return;
        ++chains[c].acked;
        parent = *BlockHash::FromBytes(b.hash());

        std::vector<int> tokens = s.acked_tokens;
        tokens.push_back(c * 1000 + i);
        s.attempted_tokens = tokens;
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
        v1::PutSessionRequest req;
        req.set_session_id(id);
        req.set_root(kRoot.Bytes());
        req.mutable_tokens()->Assign(tokens.begin(), tokens.end());
        v1::Session resp;
        if (!service.stub()->PutSession(&ctx, req, &resp).ok()) return;
        s.acked_version = resp.version();
        s.acked_tokens = tokens;
      }
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(20, 300)(rng)));
    ::kill(service.process()->pid(), SIGKILL);
    stop = true;
    writer.join();
    EXPECT_EQ(service.process()->Stop(), 128 + SIGKILL);
  }
  int acked = 0;
  for (const Chain& c : chains) acked += c.acked;
  std::printf("%d blocks acknowledged over 20 kills\n", acked);
  EXPECT_GT(acked, 20);
}

// A store on a 16 MiB filesystem (tmpfs in a private mount namespace) that
// keeps 4 MiB free: filling it makes writes RESOURCE_EXHAUSTED while reads
// go on; once the filesystem grows, writes succeed again.
TEST(KvCacheDurabilityTest, FullDiskRefusesWritesKeepsReadsAndRecovers) {
  if (std::system("unshare -rm true 2>/dev/null") != 0) {
    GTEST_SKIP() << "no user and mount namespaces here (unshare -rm) to make a small filesystem";
  }
  const std::string mnt = absl::StrCat(::testing::TempDir(), "/kvcache_full");
  std::filesystem::remove_all(mnt);
  std::filesystem::create_directories(mnt);
  Service service({"/usr/bin/unshare", "-rm", "/bin/sh", "-c",
                   absl::StrCat("mount -t tmpfs -o size=16m tmpfs ", mnt, " && exec ", g_kvcache, " --dir=", mnt,
                                "/db --port=0 --metrics-port=-1 --min-free-mb=4")});
  ASSERT_TRUE(service.ok());
  BlockHash parent = kRoot;
  std::vector<std::string> hashes;
  grpc::Status st;
  int i = 0;
  for (; i < 2000; ++i) {
    v1::KvBlock b = MakeBlock(0, i, parent, 64 << 10);
    st = PutOne(service.stub(), b);
    if (!st.ok()) break;
    hashes.push_back(b.hash());
    parent = *BlockHash::FromBytes(b.hash());
  }
  ASSERT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message() << " after " << i;
  EXPECT_NE(st.error_message().find("disk is full"), std::string::npos) << st.error_message();
  EXPECT_GT(hashes.size(), 10u);
  std::printf("disk full after %zu blocks of 64 KiB: %s\n", hashes.size(), st.error_message().c_str());

  grpc::Status read;
  std::vector<v1::KvBlock> got = GetChain(service.stub(), hashes, &read);
  ASSERT_TRUE(read.ok()) << read.error_message();
  EXPECT_EQ(got.size(), hashes.size());
  // Still full: still refused, nothing lost.
  EXPECT_EQ(PutOne(service.stub(), MakeBlock(0, i, parent, 64 << 10)).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);

  // Space returns.
  const std::string grow =
      absl::StrCat("nsenter -t ", service.process()->pid(), " -U -m --preserve-credentials mount -o remount,size=256m ",
                   mnt);
  ASSERT_EQ(std::system(grow.c_str()), 0) << grow;
  bool resumed = false;
  for (int tries = 0; tries < 100 && !resumed; ++tries) {
    resumed = PutOne(service.stub(), MakeBlock(0, i, parent, 64 << 10)).ok();
    if (!resumed) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_TRUE(resumed) << "writes did not resume within 20 s of space returning";
  got = GetChain(service.stub(), hashes, &read);
  EXPECT_TRUE(read.ok());
  EXPECT_EQ(got.size(), hashes.size());
  service.process()->Stop();
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc != 2) {
    std::fprintf(stderr, "usage: kvcache_durability_test MOEMESH_KVCACHE_BIN\n");
    return 2;
  }
  moemesh::g_kvcache = argv[1];
  return RUN_ALL_TESTS();
}
