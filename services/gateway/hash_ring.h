#ifndef MOEMESH_SERVICES_GATEWAY_HASH_RING_H_
#define MOEMESH_SERVICES_GATEWAY_HASH_RING_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

namespace moemesh {

// Consistent hashing of keys (session ids) onto nodes (routers), with
// virtual nodes for balance. Adding or removing one of N nodes moves about
// 1/N of the keys, and every gateway that knows the same nodes maps a key
// to the same node: the hash is fixed (FNV-1a, then a 64-bit mixer), not
// seeded per process.
class HashRing {
 public:
  explicit HashRing(const std::vector<std::string>& nodes, int virtual_nodes = 512);

  // Every node index once, in the order to try them for `key`: its home
  // first, then the next distinct nodes clockwise (the fallbacks when the
  // home is down).
  std::vector<int> Order(absl::string_view key) const;

  static uint64_t Hash(absl::string_view s);

 private:
  int num_nodes_;
  std::vector<std::pair<uint64_t, int>> ring_;  // sorted by point
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_GATEWAY_HASH_RING_H_
