#ifndef MOEMESH_CORE_KV_HOST_KV_TIER_H_
#define MOEMESH_CORE_KV_HOST_KV_TIER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/kv/kv_tier.h"

namespace moemesh {

// Memory for a HostKvTier's blocks in one piece of `bytes`, or an error.
// Below a GPU router's cache: page-locked memory (PinnedHostArena in
// core/kernels/cuda/cuda_runtime_util.h), from which blocks go back to the
// GPU by DMA, with no copy through a staging buffer.
using HostArena = std::function<absl::StatusOr<std::shared_ptr<void>>(size_t bytes)>;

// The host-memory tier: blocks in this process's memory, up to
// `capacity_bytes`, the least recently used dropped first. Below a GPU
// router's cache it keeps what the GPU's cache evicts (blocks come back by
// a copy, not by recompute); below a CPU router's, it holds blocks past
// the cache's own size. Fetch hands out views of the tier's own memory
// (KvTierBlock::pin keeps a block's memory while a fetched block lives,
// even once the tier has dropped it). Thread-safe.
class HostKvTier : public KvTier {
 public:
  // Each block in memory of its own.
  explicit HostKvTier(int64_t capacity_bytes) : capacity_(capacity_bytes) {}
  // Blocks in one arena of `capacity_bytes` from `arena`, allocated here,
  // in slots of the first block's size (the blocks of one cache layout are
  // all one size; a block of another size is not kept). A slot that a
  // fetched block still views is not reused: while every slot is so held,
  // new blocks are not kept.
  static absl::StatusOr<std::unique_ptr<HostKvTier>> WithArena(int64_t capacity_bytes, const HostArena& arena);

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
  // The arena's free slots, shared with the pins that give them back.
  struct Slots {
    absl::Mutex mu;
    std::vector<int> free ABSL_GUARDED_BY(mu);
  };

  // Drops the least recently used block.
  void EvictOne() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A free slot of the arena, evicting blocks for one; -1 if every slot is
  // held by fetched blocks.
  int TakeSlot() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `b`'s rows copied into a slot of the arena; null if not kept.
  std::shared_ptr<const KvTierBlock> IntoArena(KvTierBlock& b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int64_t capacity_;
  std::shared_ptr<void> arena_;  // or null: blocks in memory of their own
  std::shared_ptr<Slots> slots_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<Key, Entry> blocks_ ABSL_GUARDED_BY(mu_);
  std::list<Key> lru_ ABSL_GUARDED_BY(mu_);  // least recently used first
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t evictions_ ABSL_GUARDED_BY(mu_) = 0;
  size_t slot_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // the arena's slots: the first block's size
  int slots_used_ ABSL_GUARDED_BY(mu_) = 0;     // slots handed out so far (then reused)
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_KV_HOST_KV_TIER_H_
