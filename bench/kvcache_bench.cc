// The kvcache service's put and get rates against a plain RocksDB loop on
// the same values, in the same run (target: the service at >= 0.7x).
//   kvcache_bench [--blocks 256] [--block-kib 1024] [--dir /tmp]
// The service runs in this process behind a real loopback gRPC server and
// its raw data channel; blocks go through KvCacheTier (the router's
// client): puts of 16 blocks at a time, gets of all in one call, over the
// data channel (frames, the bytes as raw payload), over the data channel
// with the bytes in memory shared with the service (as large as the whole
// get: what a router on the service's host gives --kvcache-shared-memory-mb)
// and over gRPC alone (PutBlocks and GetBlocks streams).
#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "rocksdb/db.h"
#include "services/kvcache/local_kvcache.h"
#include "services/kvcache_client/kvcache_tier.h"

namespace moemesh {
namespace {

// Gets are timed this many times, each side's best kept: a steady state,
// where the first round also pays for pages the process touches first.
constexpr int kGetRounds = 5;

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int Run(int argc, char** argv) {
  int blocks = 256, block_kib = 1024;
  std::string base = "/tmp";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--blocks") {
      blocks = std::atoi(argv[i + 1]);
    } else if (flag == "--block-kib") {
      block_kib = std::atoi(argv[i + 1]);
    } else if (flag == "--dir") {
      base = argv[i + 1];
    } else {
      std::fprintf(stderr, "usage: kvcache_bench [--blocks N] [--block-kib K] [--dir DIR]\n");
      return 2;
    }
  }
  // One chain of blocks of random bytes (incompressible, as KV rows are).
  const BlockHash root = HashBytes("kvcache_bench");
  std::vector<KvTierBlock> chain;
  std::mt19937_64 rng(1);
  BlockHash parent = root;
  for (int i = 0; i < blocks; ++i) {
    KvTierBlock b;
    b.parent = parent;
    for (int t = 0; t < 16; ++t) b.tokens.push_back(16 * i + t);
    b.hash = ChainBlockHash(parent, b.tokens);
    b.bytes.resize(static_cast<size_t>(block_kib) << 10);
    for (size_t k = 0; k + 8 <= b.bytes.size(); k += 8) {
      const uint64_t v = rng();
      std::memcpy(&b.bytes[k], &v, 8);
    }
    parent = b.hash;
    chain.push_back(std::move(b));
  }
  const double mb = static_cast<double>(blocks) * block_kib / 1024.0;

  // Plain RocksDB: the same values under the same keys, one Put each.
  const std::string plain_dir = base + "/kvcache_bench_plain", service_dir = base + "/kvcache_bench_service";
  std::filesystem::remove_all(plain_dir);
  std::filesystem::remove_all(service_dir);
  // Gets into one string, and into a string a value kept (as a fetch
  // returns a run of blocks).
  double plain_put, plain_get, plain_get_kept;
  {
    rocksdb::Options o;
    o.create_if_missing = true;
    rocksdb::DB* raw = nullptr;
    if (!rocksdb::DB::Open(o, plain_dir, &raw).ok()) return 1;
    std::unique_ptr<rocksdb::DB> db(raw);
    auto t0 = std::chrono::steady_clock::now();
    for (const KvTierBlock& b : chain) {
      if (!db->Put({}, root.Bytes() + b.hash.Bytes(), b.bytes).ok()) return 1;
    }
    plain_put = Seconds(t0);
    plain_get = plain_get_kept = 1e30;
    for (int round = 0; round < kGetRounds; ++round) {
      for (const bool keep : {false, true}) {
        t0 = std::chrono::steady_clock::now();
        std::string v;
        std::vector<std::string> kept;
        size_t total = 0;
        for (const KvTierBlock& b : chain) {
          if (!db->Get({}, root.Bytes() + b.hash.Bytes(), &v).ok()) return 1;
          total += v.size();
          if (keep) kept.push_back(std::move(v));
        }
        double& best = keep ? plain_get_kept : plain_get;
        best = std::min(best, Seconds(t0));
        if (total != chain.size() * chain[0].bytes.size()) return 1;
      }
    }
  }

  // The service twice: over its raw data channel (what routers use where
  // it is offered) and over gRPC alone.
  struct Figures {
    double put = 0, get = 0, store_get = 0;
  };
  auto measure = [&](bool data_channel, bool shared_memory, Figures* f) -> bool {
    std::filesystem::remove_all(service_dir);
    LocalKvCache kv(service_dir, data_channel);
    KvCacheTier::Options to;
    to.addresses = {kv.address()};
    to.fetch_timeout = absl::Seconds(60);
    to.max_queued_bytes = int64_t{1} << 40;
    to.use_data_channel = data_channel;
    to.shared_memory_bytes = shared_memory ? std::min(int64_t{1} << 30, int64_t{blocks} * block_kib * 1024 + 4096) : 0;
    auto tier = KvCacheTier::Create(to);
    if (!tier.ok()) return false;
    // A connection made (and its shared memory set up) before the clock.
    if (!(*tier)->Fetch(root, {HashBytes("none")}).ok()) return false;
    // The blocks as a router hands them over: its own strings, moved in
    // (copied here before the clock starts, as the plain loop's values are
    // ready before its clock).
    std::vector<std::vector<KvTierBlock>> batches;
    for (int i = 0; i < blocks; i += 16) {
      batches.emplace_back(chain.begin() + i, chain.begin() + std::min(blocks, i + 16));
    }
    auto t0 = std::chrono::steady_clock::now();
    for (std::vector<KvTierBlock>& batch : batches) (*tier)->Store(root, chain[0].hash, std::move(batch));
    (*tier)->Flush();
    f->put = Seconds(t0);
    if ((*tier)->stats().stored_blocks != blocks) {
      std::fprintf(stderr, "stored %lld of %d blocks\n", static_cast<long long>((*tier)->stats().stored_blocks),
                   blocks);
      return false;
    }
    std::vector<BlockHash> names;
    for (const KvTierBlock& b : chain) names.push_back(b.hash);
    t0 = std::chrono::steady_clock::now();
    for (const BlockHash& h : names) {
      if (!kv.store()->Get(root, h).ok()) return false;
    }
    f->store_get = Seconds(t0);
    f->get = 1e30;
    for (int round = 0; round < kGetRounds; ++round) {
      t0 = std::chrono::steady_clock::now();
      absl::StatusOr<std::vector<KvTierBlock>> got = (*tier)->Fetch(root, names);
      f->get = std::min(f->get, Seconds(t0));
      if (!got.ok() || static_cast<int>(got->size()) != blocks) {
        std::fprintf(stderr, "fetched %zu of %d blocks: %s\n", got.ok() ? got->size() : 0, blocks,
                     got.status().ToString().c_str());
        return false;
      }
    }
    if (shared_memory && (*tier)->stats().shared_memory_blocks != (1 + kGetRounds) * blocks) {
      std::fprintf(stderr, "only %lld of %d blocks went through shared memory\n",
                   static_cast<long long>((*tier)->stats().shared_memory_blocks), (1 + kGetRounds) * blocks);
      return false;
    }
    kv.Shutdown();
    return true;
  };
  Figures shm, frames, grpc;
  if (!measure(true, true, &shm) || !measure(true, false, &frames) || !measure(false, false, &grpc)) return 1;

  std::printf("kvcache_bench: %d blocks of %d KiB (%.0f MiB), write-ahead log on, no fsync\n", blocks, block_kib, mb);
  std::printf("%-6s %16s %18s %7s %20s %7s %16s %7s\n", "", "plain RocksDB", "kvcache (shm)", "ratio",
              "kvcache (data chan.)", "ratio", "kvcache (gRPC)", "ratio");
  for (const bool put : {true, false}) {
    const double plain = put ? plain_put : plain_get;
    auto of = [put](const Figures& f) { return put ? f.put : f.get; };
    std::printf("%-6s %11.0f MB/s %13.0f MB/s %6.2fx %15.0f MB/s %6.2fx %11.0f MB/s %6.2fx\n", put ? "put" : "get",
                mb / plain, mb / of(shm), plain / of(shm), mb / of(frames), plain / of(frames), mb / of(grpc),
                plain / of(grpc));
  }
  std::printf("(the store alone, without a network hop: get %.0f MB/s; plain RocksDB keeping each value in its own "
              "string, as a fetch returns them: get %.0f MB/s, kvcache (shm) %.2fx of it)\n",
              mb / frames.store_get, mb / plain_get_kept, plain_get_kept / shm.get);
  std::filesystem::remove_all(plain_dir);
  std::filesystem::remove_all(service_dir);
  return 0;
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) { return moemesh::Run(argc, argv); }
