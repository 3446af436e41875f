#ifndef MOEMESH_CORE_ENGINE_KV_CACHE_H_
#define MOEMESH_CORE_ENGINE_KV_CACHE_H_

#include <cstdint>
#include <list>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/kernels/cpu/attention.h"
#include "core/kv/block_hash.h"

namespace moemesh {

// A sequence's place in the cache: its blocks and how many positions hold
// keys. Owned by the caller; release it with KvCache::Release.
struct KvSequence {
  std::vector<int> blocks;
  int length = 0;
  // The prefix hashes of its leading full blocks that KvCache has seen
  // (Match, Commit): block i's chains block i - 1's.
  std::vector<BlockHash> block_hashes;
};

// A paged KV cache shared by all sequences: fixed-size blocks of
// `block_size` positions, allocated on demand from one pool. Each position
// of each layer holds a row of k_width key floats followed by v_width value
// floats (latent attention stores its latent row as the key and no value).
//
// Prefix caching: a full block whose positions a sequence has written can
// be committed under the hash of its tokens chained to the blocks before it
// (vLLM's automatic prefix caching). Another sequence that begins with the
// same tokens then shares it (Match) instead of computing it again. Blocks
// are reference-counted; a committed block no sequence holds stays cached
// until an allocation needs the room, the least recently released first.
// Lookups compare the tokens too, so a hash collision cannot share a block.
// Hashes chain from `root` (CacheRoot: the model and the cache layout), so
// they name the same blocks in every process that serves the model.
//
// Not thread-safe: one engine thread owns it.
class KvCache {
 public:
  KvCache(int num_layers, int k_width, int v_width, int block_size, int num_blocks, BlockHash root = {});

  int block_size() const { return block_size_; }
  const BlockHash& root() const { return root_; }
  int num_blocks() const { return num_blocks_; }
  // Blocks an allocation can take: free ones and cached ones no sequence
  // holds.
  int free_blocks() const { return static_cast<int>(free_.size() + lru_.size()); }
  // Of those, the cached ones.
  int cached_blocks() const { return static_cast<int>(lru_.size()); }
  // Fraction of blocks held by sequences.
  double Usage() const { return 1.0 - static_cast<double>(free_blocks()) / num_blocks_; }
  // Cached blocks dropped to make room, since the start.
  int64_t evictions() const { return evictions_; }

  // Makes room for positions [seq->length, new_length). RESOURCE_EXHAUSTED,
  // with nothing allocated, when the pool cannot hold them.
  absl::Status Reserve(KvSequence* seq, int new_length);
  // Frees the blocks reserved past seq->length (none of them committed).
  void Shrink(KvSequence* seq);
  // Drops the sequence's hold on its blocks and resets it: committed blocks
  // stay cached, the others are free.
  void Release(KvSequence* seq);

  // What Match would attach: the tokens its blocks cover (whole blocks of
  // `tokens`, at most max_tokens) and how many of those blocks no sequence
  // holds now (an allocation could take them until then).
  struct PrefixMatch {
    int tokens = 0;
    int idle_blocks = 0;
  };
  PrefixMatch Probe(absl::Span<const int> tokens, int max_tokens) const;
  // Attaches to `seq` the longest run of committed blocks that continues
  // it along `tokens` (its tokens so far, then more), up to max_tokens
  // tokens, and sets seq->length to the tokens its blocks now cover
  // (returned). `seq` must be empty or hold only full blocks whose hashes it
  // knows (Match and Commit leave it so); otherwise nothing is attached.
  int Match(absl::Span<const int> tokens, int max_tokens, KvSequence* seq);
  // Commits the full blocks of `seq` not committed yet: `tokens` are the
  // tokens at positions [0, seq->length) or more. A block whose prefix is
  // cached already (another sequence computed it too) stays private.
  void Commit(KvSequence* seq, absl::Span<const int> tokens);

  float* Row(int layer, const KvSequence& seq, int position);
  // The rows of one block of one layer: [block_size][k_width + v_width].
  float* BlockRows(int block, int layer) const;
  int num_layers() const { return num_layers_; }
  int row_width() const { return row_; }
  // Pages of one layer for the attention kernel; `ptrs` backs the pointers
  // and must outlive the returned view.
  KvPages Pages(int layer, const KvSequence& seq, std::vector<const float*>* ptrs) const;

 private:
  // The committed block holding `block_tokens` after `parent`, or -1.
  int Find(const BlockHash& hash, const BlockHash& parent, absl::Span<const int> block_tokens) const;
  // Calls f(block, hash) for each committed block that continues `tokens`
  // from block `first` (whose predecessor's hash is `parent`), in order, up
  // to max_tokens tokens, while f returns true.
  template <typename F>
  void Walk(absl::Span<const int> tokens, int max_tokens, int first, BlockHash parent, F f) const;
  int Take();  // a free block, else the least recently released cached one

  struct BlockInfo {
    int refs = 0;
    bool committed = false;
    BlockHash hash, parent;
    std::vector<int> tokens;  // committed: its tokens
    std::list<int>::iterator lru;  // committed and refs == 0: its place in lru_
  };

  const int num_layers_, k_width_, v_width_, row_, block_size_, num_blocks_;
  const BlockHash root_;
  std::unique_ptr<float[]> storage_;  // untouched pages cost no memory
  std::vector<int> free_;
  std::vector<BlockInfo> info_;
  std::list<int> lru_;  // committed blocks no sequence holds, oldest first
  absl::flat_hash_map<BlockHash, int> committed_;  // chained hash -> block
  int64_t evictions_ = 0;
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_ENGINE_KV_CACHE_H_
