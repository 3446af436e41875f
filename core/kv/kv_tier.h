#ifndef MOEMESH_CORE_KV_KV_TIER_H_
#define MOEMESH_CORE_KV_KV_TIER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "core/kv/block_hash.h"

namespace moemesh {

// One full KV block leaving or entering the router's cache: its name, its
// parent's (the root for a sequence's first block), its tokens, and its
// rows: [layers][block_size][k_width + v_width] floats (ForwardPass::ReadKvBlocks).
struct KvTierBlock {
  BlockHash hash, parent;
  std::vector<int> tokens;
  std::string bytes;  // the rows, owned (empty where `pin` is set)
  // Or rows left where the tier received them (the kvcache service's
  // shared memory): `view`, valid while `pin` or a copy of it lives. A pin
  // holds that memory (a connection) from other fetches: consume the rows
  // soon, or Own() them.
  absl::string_view view;
  std::shared_ptr<const void> pin;

  absl::string_view data() const { return pin ? view : absl::string_view(bytes); }
  // Copies pinned rows into `bytes` and lets the pin go.
  void Own() {
    if (!pin) return;
    bytes.assign(view.data(), view.size());
    view = {};
    pin.reset();
  }
};

// A tier of the KV cache below the router's own (docs/ARCHITECTURE.md, "KV
// cache"): host memory (HostKvTier), the kvcache service (KvCacheTier), or
// both (KvTierChain). The scheduler stores every block it commits and, for
// a new request, fetches the blocks its own cache lacks. A tier is a cache:
// it may lose anything, and the scheduler recomputes what it cannot fetch.
// Thread-safe: Fetch runs off the scheduler's thread.
class KvTier {
 public:
  virtual ~KvTier() = default;
  // The blocks of `chain` from index `from` on that the tier holds, in
  // order, up to the first it lacks. `chain` names a sequence's blocks
  // under `root` from its first (its head, which a tier of several
  // replicas places the sequence by). An error (the tier unreachable, too
  // slow) means none.
  virtual absl::StatusOr<std::vector<KvTierBlock>> Fetch(const BlockHash& root, absl::Span<const BlockHash> chain,
                                                        size_t from = 0) = 0;
  // Takes blocks of the sequence whose first block is `head`, in chain
  // order, and returns at once: a slow or absent tier must never stall a
  // step. It may drop them.
  virtual void Store(const BlockHash& root, const BlockHash& head, std::vector<KvTierBlock> blocks) = 0;
};

// Tiers nearest first (host memory, then the kvcache service): Fetch takes
// what the first holds, the rest from the next, and copies what a lower
// tier gave into the tiers above it; Store gives blocks to every tier.
class KvTierChain : public KvTier {
 public:
  // The tiers must outlive the chain.
  explicit KvTierChain(std::vector<KvTier*> tiers) : tiers_(std::move(tiers)) {}

  absl::StatusOr<std::vector<KvTierBlock>> Fetch(const BlockHash& root, absl::Span<const BlockHash> chain,
                                                size_t from = 0) override;
  void Store(const BlockHash& root, const BlockHash& head, std::vector<KvTierBlock> blocks) override;

 private:
  std::vector<KvTier*> tiers_;
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_KV_KV_TIER_H_
