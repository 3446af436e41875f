#ifndef MOEMESH_CORE_KV_HOST_KV_TIER_H_
#define MOEMESH_CORE_KV_HOST_KV_TIER_H_

#include <cstdint>
#include <list>
#include <memory>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "core/kv/kv_tier.h"

namespace moemesh {

// The host-memory tier: blocks in this process's memory, up to
// `capacity_bytes`, the least recently used dropped first. Below a GPU
// router's cache it keeps what the GPU's cache evicts (blocks come back by
// a copy, not by recompute); below a CPU router's, it holds blocks past
// the cache's own size. Thread-safe.
class HostKvTier : public KvTier {
 public:
  explicit HostKvTier(int64_t capacity_bytes) : capacity_(capacity_bytes) {}

  absl::StatusOr<std::vector<KvTierBlock>> Fetch(const BlockHash& root, absl::Span<const BlockHash> chain,
                                                size_t from = 0) override;
  void Store(const BlockHash& root, const BlockHash& head, std::vector<KvTierBlock> blocks) override;

  int64_t bytes() const;
  int64_t blocks() const;
  int64_t evictions() const;

 private:
  struct Key {
    BlockHash root, hash;
    friend bool operator==(const Key& a, const Key& b) { return a.root == b.root && a.hash == b.hash; }
    template <typename H>
    friend H AbslHashValue(H h, const Key& k) {
      return H::combine(std::move(h), k.root, k.hash);
    }
  };
  struct Entry {
    std::shared_ptr<const KvTierBlock> block;
    std::list<Key>::iterator lru;
  };

  const int64_t capacity_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<Key, Entry> blocks_ ABSL_GUARDED_BY(mu_);
  std::list<Key> lru_ ABSL_GUARDED_BY(mu_);  // least recently used first
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t evictions_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_KV_HOST_KV_TIER_H_
