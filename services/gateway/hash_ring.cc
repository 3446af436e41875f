#include "services/gateway/hash_ring.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace moemesh {

uint64_t HashRing::Hash(absl::string_view s) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  // splitmix64's finaliser: FNV alone clusters short similar keys.
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

HashRing::HashRing(const std::vector<std::string>& nodes, int virtual_nodes)
    : num_nodes_(static_cast<int>(nodes.size())) {
  for (int n = 0; n < num_nodes_; ++n) {
    for (int v = 0; v < virtual_nodes; ++v) ring_.emplace_back(Hash(absl::StrCat(nodes[n], "#", v)), n);
  }
  std::sort(ring_.begin(), ring_.end());
}

std::vector<int> HashRing::Order(absl::string_view key) const {
  std::vector<int> order;
  if (ring_.empty()) return order;
  std::vector<bool> seen(num_nodes_, false);
  auto it = std::lower_bound(ring_.begin(), ring_.end(), std::make_pair(Hash(key), 0));
  for (size_t i = 0; i < ring_.size() && static_cast<int>(order.size()) < num_nodes_; ++i, ++it) {
    if (it == ring_.end()) it = ring_.begin();
    if (!seen[it->second]) {
      seen[it->second] = true;
      order.push_back(it->second);
    }
  }
  return order;
}

}  // namespace moemesh
