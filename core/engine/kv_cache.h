#ifndef MOEMESH_CORE_ENGINE_KV_CACHE_H_
#define MOEMESH_CORE_ENGINE_KV_CACHE_H_

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "core/kernels/cpu/attention.h"

namespace moemesh {

// A sequence's place in the cache: its blocks and how many positions hold
// keys. Owned by the caller; release it with KvCache::Release.
struct KvSequence {
  std::vector<int> blocks;
  int length = 0;
};

// A paged KV cache shared by all sequences: fixed-size blocks of
// `block_size` positions, allocated on demand from one pool. Each position
// of each layer holds a row of k_width key floats followed by v_width value
// floats (latent attention stores its latent row as the key and no value).
// Not thread-safe: one engine thread owns it.
class KvCache {
 public:
  KvCache(int num_layers, int k_width, int v_width, int block_size, int num_blocks);

  int block_size() const { return block_size_; }
  int num_blocks() const { return num_blocks_; }
  int free_blocks() const { return static_cast<int>(free_.size()); }
  // Fraction of blocks in use.
  double Usage() const { return 1.0 - static_cast<double>(free_.size()) / num_blocks_; }

  // Makes room for positions [seq->length, new_length). RESOURCE_EXHAUSTED,
  // with nothing allocated, when the pool cannot hold them.
  absl::Status Reserve(KvSequence* seq, int new_length);
  // Returns the sequence's blocks to the pool and resets it.
  void Release(KvSequence* seq);

  float* Row(int layer, const KvSequence& seq, int position);
  // Pages of one layer for the attention kernel; `ptrs` backs the pointers
  // and must outlive the returned view.
  KvPages Pages(int layer, const KvSequence& seq, std::vector<const float*>* ptrs) const;

 private:
  float* Block(int block, int layer) const;

  const int num_layers_, k_width_, v_width_, row_, block_size_, num_blocks_;
  std::unique_ptr<float[]> storage_;  // untouched pages cost no memory
  std::vector<int> free_;
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_ENGINE_KV_CACHE_H_
