#ifndef MOEMESH_CORE_KV_BLOCK_HASH_H_
#define MOEMESH_CORE_KV_BLOCK_HASH_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace moemesh {

// The name of a full KV block: a 128-bit XXH3 hash of its parent's hash and
// its token ids, chained from a root that fingerprints the model and the
// cache layout (docs/ARCHITECTURE.md, "KV cache"). Stable across processes,
// machines and builds, so a router, its host tier and the kvcache service
// name a block alike; 128 bits make a collision across a whole fleet's
// blocks negligible.
struct BlockHash {
  uint64_t hi = 0, lo = 0;

  // 16 bytes, big-endian: the key form on the wire and on disk.
  std::string Bytes() const;
  static absl::StatusOr<BlockHash> FromBytes(absl::string_view bytes);
  std::string Hex() const;

  friend bool operator==(const BlockHash& a, const BlockHash& b) { return a.hi == b.hi && a.lo == b.lo; }
  friend bool operator!=(const BlockHash& a, const BlockHash& b) { return !(a == b); }
  template <typename H>
  friend H AbslHashValue(H h, const BlockHash& b) {
    return H::combine(std::move(h), b.hi, b.lo);
  }
};

// The hash of arbitrary bytes (a fingerprint's description, a file's header).
BlockHash HashBytes(absl::string_view bytes);

// The hash of the block holding `tokens` after the block `parent` (for a
// sequence's first block, `parent` is the root). Token ids are hashed as
// little-endian int32 whatever the host's byte order.
BlockHash ChainBlockHash(const BlockHash& parent, absl::Span<const int> tokens);

// The 64-bit checksum that each stored block value carries (XXH3-64), of
// `bytes`, or of `a` then `b` (as of their concatenation, without making it).
uint64_t Checksum64(absl::string_view bytes);
uint64_t Checksum64(absl::string_view a, absl::string_view b);
// The checksum of the parts one after another (as of their concatenation).
uint64_t Checksum64Parts(absl::Span<const absl::string_view> parts);

}  // namespace moemesh

#endif  // MOEMESH_CORE_KV_BLOCK_HASH_H_
