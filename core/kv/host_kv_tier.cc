#include "core/kv/host_kv_tier.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace moemesh {

absl::StatusOr<std::unique_ptr<HostKvTier>> HostKvTier::WithArena(int64_t capacity_bytes, const HostArena& arena) {
  if (capacity_bytes <= 0) return absl::InvalidArgumentError("a host KV tier's capacity must be positive");
  absl::StatusOr<std::shared_ptr<void>> memory = arena(static_cast<size_t>(capacity_bytes));
  if (!memory.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat("the host KV tier's ", capacity_bytes >> 20,
                                                     " MiB: ", memory.status().message()));
  }
  auto tier = std::make_unique<HostKvTier>(capacity_bytes);
  tier->arena_ = std::move(*memory);
  tier->slots_ = std::make_shared<Slots>();
  return tier;
}

absl::StatusOr<std::vector<KvTierBlock>> HostKvTier::Fetch(const BlockHash& root, absl::Span<const BlockHash> chain,
                                                          size_t from) {
  std::vector<std::shared_ptr<const KvTierBlock>> found;
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = from; i < chain.size(); ++i) {
      const BlockHash& h = chain[i];
      auto it = blocks_.find(Key{root, h});
      if (it == blocks_.end()) break;
      lru_.splice(lru_.end(), lru_, it->second.lru);
      found.push_back(it->second.block);
    }
  }
  // Views of the tier's memory, no copy of the rows.
  std::vector<KvTierBlock> out(found.size());
  for (size_t i = 0; i < found.size(); ++i) {
    const KvTierBlock& b = *found[i];
    out[i].hash = b.hash;
    out[i].parent = b.parent;
    out[i].tokens = b.tokens;
    out[i].view = b.data();
    out[i].pin = b.pin ? b.pin : std::shared_ptr<const void>(found[i], b.bytes.data());
  }
  return out;
}

void HostKvTier::EvictOne() {
  auto old = blocks_.find(lru_.front());
  bytes_ -= static_cast<int64_t>(old->second.block->data().size());
  blocks_.erase(old);  // an arena slot frees once no fetched block views it
  lru_.pop_front();
  ++evictions_;
}

int HostKvTier::TakeSlot() {
  const int num_slots = static_cast<int>(static_cast<size_t>(capacity_) / slot_bytes_);
  while (true) {
    {
      absl::MutexLock lock(&slots_->mu);
      if (!slots_->free.empty()) {
        const int slot = slots_->free.back();
        slots_->free.pop_back();
        return slot;
      }
    }
    if (slots_used_ < num_slots) return slots_used_++;
    if (lru_.empty()) return -1;
    EvictOne();
  }
}

std::shared_ptr<const KvTierBlock> HostKvTier::IntoArena(KvTierBlock& b) {
  const absl::string_view rows = b.data();
  if (rows.empty()) return nullptr;
  if (slot_bytes_ == 0) slot_bytes_ = rows.size();
  if (rows.size() != slot_bytes_ || slot_bytes_ > static_cast<size_t>(capacity_)) return nullptr;
  const int slot = TakeSlot();
  if (slot < 0) return nullptr;
  char* at = static_cast<char*>(arena_.get()) + static_cast<size_t>(slot) * slot_bytes_;
  std::memcpy(at, rows.data(), rows.size());
  auto kept = std::make_shared<KvTierBlock>();
  kept->hash = b.hash;
  kept->parent = b.parent;
  kept->tokens = std::move(b.tokens);
  kept->view = absl::string_view(at, rows.size());
  // The slot goes back when the last of the tier's entry and the fetched
  // blocks lets go; the arena lives as long as any of them.
  kept->pin = std::shared_ptr<const void>(at, [slots = slots_, arena = arena_, slot](const void*) {
    absl::MutexLock lock(&slots->mu);
    slots->free.push_back(slot);
  });
  return kept;
}

void HostKvTier::Store(const BlockHash& root, const BlockHash&, std::vector<KvTierBlock> blocks) {
  // Rows a lower tier left in its memory are copied here, outside the lock
  // (into the arena, under it).
  if (!arena_) {
    for (KvTierBlock& b : blocks) b.Own();
  }
  absl::MutexLock lock(&mu_);
  for (KvTierBlock& b : blocks) {
    const int64_t size = static_cast<int64_t>(b.data().size());
    if (size > capacity_) continue;
    const Key key{root, b.hash};
    auto it = blocks_.find(key);
    if (it != blocks_.end()) {
      lru_.splice(lru_.end(), lru_, it->second.lru);
      continue;
    }
    std::shared_ptr<const KvTierBlock> kept;
    if (arena_) {
      kept = IntoArena(b);
      if (kept == nullptr) continue;
    } else {
      while (bytes_ + size > capacity_ && !lru_.empty()) EvictOne();
      kept = std::make_shared<const KvTierBlock>(std::move(b));
    }
    Entry& e = blocks_[key];
    e.lru = lru_.insert(lru_.end(), key);
    e.block = std::move(kept);
    bytes_ += size;
  }
}

int64_t HostKvTier::bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

int64_t HostKvTier::blocks() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(blocks_.size());
}

int64_t HostKvTier::evictions() const {
  absl::MutexLock lock(&mu_);
  return evictions_;
}

}  // namespace moemesh
