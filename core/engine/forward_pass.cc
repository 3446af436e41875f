#include "core/engine/forward_pass.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/engine/decoder.h"
#include "core/engine/kv_cache.h"

namespace moemesh {

absl::Status CheckForwardItems(absl::Span<const ForwardItem> items, int vocab_size) {
  for (const ForwardItem& it : items) {
    if (it.tokens.empty()) return absl::InvalidArgumentError("a forward item has no tokens");
    for (int t : it.tokens) {
      if (t < 0 || t >= vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", t, " is outside the vocabulary [0, ", vocab_size, ")"));
      }
    }
  }
  return absl::OkStatus();
}

int ForwardPass::kv_k_width() const { return CacheKeyWidth(config()); }

int ForwardPass::kv_v_width() const { return CacheValueWidth(config()); }

absl::Status ForwardPass::SampleLast(absl::Span<const DeviceSampleRow>, std::vector<int>*, std::vector<float>*) {
  return absl::FailedPreconditionError("this forward pass does not sample on a device");
}

absl::Status ForwardPass::ReadKvBlock(const KvCache& cache, int block, std::string* bytes) {
  const size_t layer_bytes = static_cast<size_t>(cache.block_size()) * cache.row_width() * sizeof(float);
  bytes->resize(layer_bytes * cache.num_layers());
  for (int l = 0; l < cache.num_layers(); ++l) {
    std::memcpy(bytes->data() + l * layer_bytes, cache.BlockRows(block, l), layer_bytes);
  }
  return absl::OkStatus();
}

absl::Status ForwardPass::WriteKvBlock(KvCache* cache, int block, absl::string_view bytes) {
  const size_t layer_bytes = static_cast<size_t>(cache->block_size()) * cache->row_width() * sizeof(float);
  if (bytes.size() != layer_bytes * cache->num_layers()) {
    return absl::InvalidArgumentError(absl::StrCat("a KV block of this cache is ", layer_bytes * cache->num_layers(),
                                                   " bytes; got ", bytes.size()));
  }
  for (int l = 0; l < cache->num_layers(); ++l) {
    std::memcpy(cache->BlockRows(block, l), bytes.data() + l * layer_bytes, layer_bytes);
  }
  return absl::OkStatus();
}

}  // namespace moemesh
