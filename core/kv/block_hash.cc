#include "core/kv/block_hash.h"

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace moemesh {
namespace {

void StoreBig64(char* p, uint64_t v) {
  for (int i = 7; i >= 0; --i, v >>= 8) p[i] = static_cast<char>(v & 0xff);
}

uint64_t LoadBig64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

}  // namespace

std::string BlockHash::Bytes() const {
  std::string out(16, '\0');
  StoreBig64(out.data(), hi);
  StoreBig64(out.data() + 8, lo);
  return out;
}

absl::StatusOr<BlockHash> BlockHash::FromBytes(absl::string_view bytes) {
  if (bytes.size() != 16) {
    return absl::InvalidArgumentError(absl::StrCat("a block hash is 16 bytes, got ", bytes.size()));
  }
  BlockHash h;
  h.hi = LoadBig64(bytes.data());
  h.lo = LoadBig64(bytes.data() + 8);
  return h;
}

std::string BlockHash::Hex() const { return absl::BytesToHexString(Bytes()); }

BlockHash HashBytes(absl::string_view bytes) {
  const XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
  return BlockHash{h.high64, h.low64};
}

BlockHash ChainBlockHash(const BlockHash& parent, absl::Span<const int> tokens) {
  // Parent then tokens in one buffer: blocks are small (16-64 tokens), and
  // one call is faster than XXH3's streaming state.
  char stack[16 + 4 * 128];
  std::string heap;
  const size_t size = 16 + 4 * tokens.size();
  char* buf = stack;
  if (size > sizeof(stack)) {
    heap.resize(size);
    buf = heap.data();
  }
  StoreBig64(buf, parent.hi);
  StoreBig64(buf + 8, parent.lo);
  for (size_t i = 0; i < tokens.size(); ++i) {
    const uint32_t t = static_cast<uint32_t>(tokens[i]);
    for (int b = 0; b < 4; ++b) buf[16 + 4 * i + b] = static_cast<char>((t >> (8 * b)) & 0xff);
  }
  const XXH128_hash_t h = XXH3_128bits(buf, size);
  return BlockHash{h.high64, h.low64};
}

uint64_t Checksum64(absl::string_view bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

uint64_t Checksum64(absl::string_view a, absl::string_view b) { return Checksum64Parts({a, b}); }

uint64_t Checksum64Parts(absl::Span<const absl::string_view> parts) {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  for (absl::string_view p : parts) XXH3_64bits_update(&state, p.data(), p.size());
  return XXH3_64bits_digest(&state);
}

}  // namespace moemesh
