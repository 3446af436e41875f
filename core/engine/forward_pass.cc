#include "core/engine/forward_pass.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
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

absl::Status CheckKvBlockSizes(absl::Span<const int> blocks, absl::Span<const absl::string_view> bytes,
                               size_t block_bytes) {
  if (blocks.size() != bytes.size()) {
    return absl::InvalidArgumentError(absl::StrCat(blocks.size(), " blocks and ", bytes.size(), " blocks' bytes"));
  }
  for (absl::string_view b : bytes) {
    if (b.size() != block_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("a KV block of this cache is ", block_bytes, " bytes; got ",
                                                     b.size()));
    }
  }
  return absl::OkStatus();
}

absl::Status ForwardPass::ReadKvBlocks(const KvCache& cache, absl::Span<const int> blocks,
                                       std::vector<std::string>* out) {
  const size_t layer_bytes = static_cast<size_t>(cache.block_size()) * cache.row_width() * sizeof(float);
  out->resize(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    std::string& bytes = (*out)[i];
    bytes.resize(layer_bytes * cache.num_layers());
    for (int l = 0; l < cache.num_layers(); ++l) {
      std::memcpy(bytes.data() + l * layer_bytes, cache.BlockRows(blocks[i], l), layer_bytes);
    }
  }
  return absl::OkStatus();
}

absl::Status ForwardPass::WriteKvBlocks(KvCache* cache, absl::Span<const int> blocks,
                                        absl::Span<const absl::string_view> bytes) {
  const size_t layer_bytes = static_cast<size_t>(cache->block_size()) * cache->row_width() * sizeof(float);
  MM_RETURN_IF_ERROR(CheckKvBlockSizes(blocks, bytes, layer_bytes * cache->num_layers()));
  for (size_t i = 0; i < blocks.size(); ++i) {
    for (int l = 0; l < cache->num_layers(); ++l) {
      std::memcpy(cache->BlockRows(blocks[i], l), bytes[i].data() + l * layer_bytes, layer_bytes);
    }
  }
  return absl::OkStatus();
}

}  // namespace moemesh
