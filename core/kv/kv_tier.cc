#include "core/kv/kv_tier.h"

namespace moemesh {

absl::StatusOr<std::vector<KvTierBlock>> KvTierChain::Fetch(const BlockHash& root, absl::Span<const BlockHash> chain,
                                                           size_t from) {
  std::vector<KvTierBlock> out;
  absl::Status first_error;
  if (from >= chain.size()) return out;
  for (size_t t = 0; t < tiers_.size() && from + out.size() < chain.size(); ++t) {
    absl::StatusOr<std::vector<KvTierBlock>> got = tiers_[t]->Fetch(root, chain, from + out.size());
    if (!got.ok()) {
      if (first_error.ok()) first_error = got.status();
      continue;
    }
    if (got->empty()) continue;
    if (t > 0) {  // promote into the tiers above
      for (size_t above = 0; above < t; ++above) tiers_[above]->Store(root, chain[0], *got);
    }
    for (KvTierBlock& b : *got) out.push_back(std::move(b));
  }
  if (out.empty() && !first_error.ok()) return first_error;
  return out;
}

void KvTierChain::Store(const BlockHash& root, const BlockHash& head, std::vector<KvTierBlock> blocks) {
  for (size_t t = 0; t + 1 < tiers_.size(); ++t) tiers_[t]->Store(root, head, blocks);
  if (!tiers_.empty()) tiers_.back()->Store(root, head, std::move(blocks));
}

}  // namespace moemesh
