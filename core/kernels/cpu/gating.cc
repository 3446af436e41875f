#include "core/kernels/cpu/gating.h"

#include "core/kernels/cpu/gating_rule.h"

#include "absl/strings/str_cat.h"

namespace moemesh {

absl::Status CheckGatingParams(const GatingParams& p) {
  if (p.num_experts < 1 || p.num_experts > kMaxGatingExperts) {
    return absl::InvalidArgumentError(
        absl::StrCat("moemesh routes among 1 to ", kMaxGatingExperts, " experts per layer, not ", p.num_experts));
  }
  const int slots = p.SlotsPerToken();
  if (slots < 1 || slots > p.num_experts) {
    return absl::InvalidArgumentError(
        absl::StrCat("experts per token (", slots, ") must be in [1, ", p.num_experts, "]"));
  }
  if (p.sigmoid && p.n_group > 1 &&
      (p.n_group > kMaxGatingGroups || p.num_experts % p.n_group != 0 || p.num_experts / p.n_group < 2 ||
       p.topk_group < 1 || p.topk_group > p.n_group)) {
    return absl::InvalidArgumentError(absl::StrCat("bad expert groups: ", p.n_group, " groups of ", p.num_experts,
                                                   " experts, keeping ", p.topk_group, " (at most ",
                                                   kMaxGatingGroups, " groups of 2 or more)"));
  }
  return absl::OkStatus();
}

void RouteTokens(const GatingParams& p, const float* logits, int n, int* expert_ids, float* weights) {
  const int slots = p.SlotsPerToken();
  GatingScratch scratch;
  for (int t = 0; t < n; ++t) {
    RouteToken(SerialTeam(), p, logits + static_cast<long>(t) * p.num_experts, expert_ids + static_cast<long>(t) * slots,
               weights + static_cast<long>(t) * slots, &scratch);
  }
}

}  // namespace moemesh
