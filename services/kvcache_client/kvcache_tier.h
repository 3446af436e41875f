#ifndef MOEMESH_SERVICES_KVCACHE_CLIENT_KVCACHE_TIER_H_
#define MOEMESH_SERVICES_KVCACHE_CLIENT_KVCACHE_TIER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/kv/kv_tier.h"

namespace moemesh {

// The kvcache service as a KvTier (docs/ARCHITECTURE.md, "KV cache"), over
// one or several replicas: each sequence lives on one replica, chosen by
// rendezvous hashing of its first block's name, so sequences that share a
// prefix share its blocks, and losing a replica loses (to recompute) only
// its sequences. Blocks go over a replica's raw data channel where it
// offers one (KvCacheStats.data_port: frames with the bytes as raw
// payload; on the service's own host, the bytes in memory the two share,
// KvFrame.shm_setup), else over gRPC. Fetch is one GetBlocks call bounded by `fetch_timeout`:
// past it, or with the replica down, it fails and the router computes. It keeps only blocks that
// are what they claim (checksum, chain hash). Store queues blocks for a
// writer thread that puts them, in order, one PutBlocks stream per batch;
// past `max_queued_bytes` new blocks are dropped (counted), so a slow
// service costs cached blocks, never a stalled step. Thread-safe.
class KvCacheTier : public KvTier {
 public:
  struct Options {
    std::vector<std::string> addresses;  // HOST:PORT of each replica
    absl::Duration fetch_timeout = absl::Milliseconds(500);
    absl::Duration store_timeout = absl::Seconds(10);
    int64_t max_queued_bytes = int64_t{256} << 20;
    // Use a replica's raw data channel where it offers one.
    bool use_data_channel = true;
    // Shared memory per data channel connection with a replica on this
    // host (0: none). A call's blocks past it go through the socket.
    int64_t shared_memory_bytes = int64_t{64} << 20;
  };
  struct Stats {
    int64_t fetches = 0, fetch_errors = 0, fetched_blocks = 0;
    int64_t stored_blocks = 0, store_errors = 0, dropped_blocks = 0;
    int64_t shared_memory_blocks = 0;  // fetched or stored through shared memory
  };

  static absl::StatusOr<std::unique_ptr<KvCacheTier>> Create(const Options& options);
  // Stops the writer; what is still queued is dropped.
  ~KvCacheTier() override;

  absl::StatusOr<std::vector<KvTierBlock>> Fetch(const BlockHash& root, absl::Span<const BlockHash> chain,
                                                size_t from = 0) override;
  void Store(const BlockHash& root, const BlockHash& head, std::vector<KvTierBlock> blocks) override;
  // The replica that keeps the sequence whose first block is `head`.
  int ReplicaOf(const BlockHash& head) const;

  // Waits until every block queued so far has been put or given up.
  void Flush();
  Stats stats() const;

 private:
  explicit KvCacheTier(const Options& options);
  void WriteLoop();
  struct Batch {
    int replica;
    BlockHash root;
    std::vector<KvTierBlock> blocks;
  };
  // Puts one batch; false on an error.
  bool Put(const Batch& batch);
  // The same over gRPC and over the data channel.
  bool PutGrpc(const Batch& batch);
  bool PutFrames(const Batch& batch);
  void CountSharedMemoryBlocks(int64_t n);
  // GetBlocks's run of `chain` from `replica` into `out`, up to the first
  // block that is not what it claims (checksum, chain hash).
  absl::Status FetchGrpc(int replica, const BlockHash& root, absl::Span<const BlockHash> chain,
                         std::vector<KvTierBlock>* out);
  absl::Status FetchFrames(int replica, const BlockHash& root, absl::Span<const BlockHash> chain,
                           std::vector<KvTierBlock>* out);
  // Whether `replica` offers its data channel (asked once, by GetStats).
  bool HasDataChannel(int replica);

  const Options options_;
  struct Channel;
  struct Rpc;  // the gRPC stubs and data channels, one per replica, kept out of this header
  struct Lease;
  std::shared_ptr<Rpc> rpc_;  // shared with the leases of pinned rows

  mutable absl::Mutex mu_;
  std::deque<Batch> queue_ ABSL_GUARDED_BY(mu_);
  int64_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;  // a batch is being put
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  Stats stats_ ABSL_GUARDED_BY(mu_);
  std::thread writer_;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_KVCACHE_CLIENT_KVCACHE_TIER_H_
