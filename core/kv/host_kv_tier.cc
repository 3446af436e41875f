#include "core/kv/host_kv_tier.h"

namespace moemesh {

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
  std::vector<KvTierBlock> out;  // copied outside the lock
  out.reserve(found.size());
  for (const auto& b : found) out.push_back(*b);
  return out;
}

void HostKvTier::Store(const BlockHash& root, const BlockHash&, std::vector<KvTierBlock> blocks) {
  // Rows a lower tier left in its memory are copied here, outside the lock.
  for (KvTierBlock& b : blocks) b.Own();
  absl::MutexLock lock(&mu_);
  for (KvTierBlock& b : blocks) {
    const int64_t size = static_cast<int64_t>(b.bytes.size());
    if (size > capacity_) continue;
    const Key key{root, b.hash};
    auto it = blocks_.find(key);
    if (it != blocks_.end()) {
      lru_.splice(lru_.end(), lru_, it->second.lru);
      continue;
    }
    while (bytes_ + size > capacity_ && !lru_.empty()) {
      auto old = blocks_.find(lru_.front());
      bytes_ -= static_cast<int64_t>(old->second.block->bytes.size());
      blocks_.erase(old);
      lru_.pop_front();
      ++evictions_;
    }
    Entry& e = blocks_[key];
    e.lru = lru_.insert(lru_.end(), key);
    e.block = std::make_shared<const KvTierBlock>(std::move(b));
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
