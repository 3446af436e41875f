#include "core/engine/kv_cache.h"

#include "absl/strings/str_cat.h"

namespace moemesh {

KvCache::KvCache(int num_layers, int k_width, int v_width, int block_size, int num_blocks)
    : num_layers_(num_layers),
      k_width_(k_width),
      v_width_(v_width),
      row_(k_width + v_width),
      block_size_(block_size),
      num_blocks_(num_blocks),
      storage_(new float[static_cast<size_t>(num_blocks) * num_layers * block_size * (k_width + v_width)]) {
  free_.reserve(num_blocks);
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

absl::Status KvCache::Reserve(KvSequence* seq, int new_length) {
  int need = (new_length + block_size_ - 1) / block_size_ - static_cast<int>(seq->blocks.size());
  if (need <= 0) return absl::OkStatus();
  if (need > static_cast<int>(free_.size())) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache full: ", need, " more blocks of ", block_size_, " tokens needed, ",
        free_.size(), " of ", num_blocks_, " free"));
  }
  for (int i = 0; i < need; ++i) {
    seq->blocks.push_back(free_.back());
    free_.pop_back();
  }
  return absl::OkStatus();
}

void KvCache::Release(KvSequence* seq) {
  for (int b : seq->blocks) free_.push_back(b);
  seq->blocks.clear();
  seq->length = 0;
}

float* KvCache::Block(int block, int layer) const {
  return storage_.get() +
         (static_cast<size_t>(block) * num_layers_ + layer) * block_size_ * static_cast<size_t>(row_);
}

float* KvCache::Row(int layer, const KvSequence& seq, int position) {
  return Block(seq.blocks[position / block_size_], layer) +
         static_cast<size_t>(position % block_size_) * row_;
}

KvPages KvCache::Pages(int layer, const KvSequence& seq, std::vector<const float*>* ptrs) const {
  ptrs->resize(seq.blocks.size());
  for (size_t i = 0; i < seq.blocks.size(); ++i) (*ptrs)[i] = Block(seq.blocks[i], layer);
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
