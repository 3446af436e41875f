#include "core/engine/forward_pass.h"

#include "absl/strings/str_cat.h"
#include "core/engine/decoder.h"

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

}  // namespace moemesh
