#include "core/engine/kv_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace moemesh {

KvCache::KvCache(int num_layers, int k_width, int v_width, int block_size, int num_blocks, BlockHash root)
    : num_layers_(num_layers),
      k_width_(k_width),
      v_width_(v_width),
      row_(k_width + v_width),
      block_size_(block_size),
      num_blocks_(num_blocks),
      root_(root),
      storage_(new float[static_cast<size_t>(num_blocks) * num_layers * block_size * (k_width + v_width)]),
      info_(num_blocks) {
  free_.reserve(num_blocks);
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

int KvCache::Take() {
  int b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else {
    b = lru_.front();
    lru_.pop_front();
    BlockInfo& info = info_[b];
    committed_.erase(info.hash);
    info.committed = false;
    info.tokens.clear();
    ++evictions_;
  }
  info_[b].refs = 1;
  return b;
}

absl::Status KvCache::Reserve(KvSequence* seq, int new_length) {
  int need = (new_length + block_size_ - 1) / block_size_ - static_cast<int>(seq->blocks.size());
  if (need <= 0) return absl::OkStatus();
  if (need > free_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache full: ", need, " more blocks of ", block_size_,
                                                     " tokens needed, ", free_blocks(), " of ", num_blocks_, " free"));
  }
  for (int i = 0; i < need; ++i) seq->blocks.push_back(Take());
  return absl::OkStatus();
}

void KvCache::Shrink(KvSequence* seq) {
  const size_t keep = static_cast<size_t>((seq->length + block_size_ - 1) / block_size_);
  while (seq->blocks.size() > keep) {
    const int b = seq->blocks.back();
    seq->blocks.pop_back();
    if (--info_[b].refs == 0) free_.push_back(b);
  }
}

void KvCache::Release(KvSequence* seq) {
  // Last block first: a prefix's tail is then evicted before its head,
  // which the tail's hash chains from.
  for (auto it = seq->blocks.rbegin(); it != seq->blocks.rend(); ++it) {
    const int b = *it;
    BlockInfo& info = info_[b];
    if (--info.refs > 0) continue;
    if (info.committed) {
      info.lru = lru_.insert(lru_.end(), b);
    } else {
      free_.push_back(b);
    }
  }
  seq->blocks.clear();
  seq->block_hashes.clear();
  seq->length = 0;
}

int KvCache::Find(const BlockHash& hash, const BlockHash& parent, absl::Span<const int> block_tokens) const {
  auto it = committed_.find(hash);
  if (it == committed_.end()) return -1;
  const BlockInfo& info = info_[it->second];
  if (info.parent != parent || !std::equal(info.tokens.begin(), info.tokens.end(), block_tokens.begin(),
                                           block_tokens.end())) {
    return -1;  // a collision
  }
  return it->second;
}

template <typename F>
void KvCache::Walk(absl::Span<const int> tokens, int max_tokens, int first, BlockHash parent, F f) const {
  const int blocks = std::min<int>(max_tokens, static_cast<int>(tokens.size())) / block_size_;
  for (int i = first; i < blocks; ++i) {
    const absl::Span<const int> bt = tokens.subspan(static_cast<size_t>(i) * block_size_, block_size_);
    const BlockHash hash = ChainBlockHash(parent, bt);
    const int b = Find(hash, parent, bt);
    if (b < 0 || !f(b, hash)) return;
    parent = hash;
  }
}

KvCache::PrefixMatch KvCache::Probe(absl::Span<const int> tokens, int max_tokens) const {
  PrefixMatch m;
  Walk(tokens, max_tokens, 0, root_, [&](int b, const BlockHash&) {
    m.tokens += block_size_;
    if (info_[b].refs == 0) ++m.idle_blocks;
    return true;
  });
  return m;
}

int KvCache::Match(absl::Span<const int> tokens, int max_tokens, KvSequence* seq) {
  const int held = static_cast<int>(seq->blocks.size());
  if (seq->length != held * block_size_ || static_cast<int>(seq->block_hashes.size()) != held) return seq->length;
  const BlockHash parent = held == 0 ? root_ : seq->block_hashes.back();
  Walk(tokens, max_tokens, held, parent, [&](int b, const BlockHash& hash) {
    BlockInfo& info = info_[b];
    if (info.refs++ == 0) lru_.erase(info.lru);
    seq->blocks.push_back(b);
    seq->block_hashes.push_back(hash);
    return true;
  });
  seq->length = static_cast<int>(seq->blocks.size()) * block_size_;
  return seq->length;
}

void KvCache::Commit(KvSequence* seq, absl::Span<const int> tokens) {
  const int full = std::min<int>(seq->length, static_cast<int>(tokens.size())) / block_size_;
  for (int i = static_cast<int>(seq->block_hashes.size()); i < full; ++i) {
    const BlockHash parent = i == 0 ? root_ : seq->block_hashes[i - 1];
    const absl::Span<const int> bt = tokens.subspan(static_cast<size_t>(i) * block_size_, block_size_);
    const BlockHash hash = ChainBlockHash(parent, bt);
    seq->block_hashes.push_back(hash);
    if (committed_.contains(hash)) continue;  // cached already, or a collision: this block stays private
    BlockInfo& info = info_[seq->blocks[i]];
    info.committed = true;
    info.hash = hash;
    info.parent = parent;
    info.tokens.assign(bt.begin(), bt.end());
    committed_.emplace(hash, seq->blocks[i]);
  }
}

float* KvCache::BlockRows(int block, int layer) const {
  return storage_.get() +
         (static_cast<size_t>(block) * num_layers_ + layer) * block_size_ * static_cast<size_t>(row_);
}

float* KvCache::Row(int layer, const KvSequence& seq, int position) {
  return BlockRows(seq.blocks[position / block_size_], layer) +
         static_cast<size_t>(position % block_size_) * row_;
}

KvPages KvCache::Pages(int layer, const KvSequence& seq, std::vector<const float*>* ptrs) const {
  ptrs->resize(seq.blocks.size());
  for (size_t i = 0; i < seq.blocks.size(); ++i) (*ptrs)[i] = BlockRows(seq.blocks[i], layer);
  KvPages p;
  p.k_blocks = ptrs->data();
  p.v_blocks = ptrs->data();
  p.block_size = block_size_;
  p.k_stride = row_;
  p.v_stride = row_;
  p.k_offset = 0;
  p.v_offset = v_width_ > 0 ? k_width_ : 0;
  return p;
}

}  // namespace moemesh
