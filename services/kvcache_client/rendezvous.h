#ifndef MOEMESH_SERVICES_KVCACHE_CLIENT_RENDEZVOUS_H_
#define MOEMESH_SERVICES_KVCACHE_CLIENT_RENDEZVOUS_H_

#include <string>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "core/kv/block_hash.h"

namespace moemesh {

// Rendezvous (highest random weight) hashing: the index of the node whose
// XXH3 of (node, key) is highest. Every client picks alike, and adding or
// removing a node moves only the keys it gains or had. `nodes` not empty.
inline size_t RendezvousPick(absl::Span<const std::string> nodes, absl::string_view key) {
  size_t best = 0;
  uint64_t best_score = 0;
  for (size_t i = 0; i < nodes.size(); ++i) {
    const uint64_t score = Checksum64(nodes[i], key);
    if (i == 0 || score > best_score) {
      best = i;
      best_score = score;
    }
  }
  return best;
}

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_KVCACHE_CLIENT_RENDEZVOUS_H_
