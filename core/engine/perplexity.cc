#include "core/engine/perplexity.h"

#include <algorithm>
#include <cmath>

namespace moemesh {

double SequenceNll(const float* logits, int vocab, absl::Span<const int> ids) {
  double total = 0;
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    const float* row = logits + i * static_cast<size_t>(vocab);
    double mx = *std::max_element(row, row + vocab);
    double sum = 0;
    for (int v = 0; v < vocab; ++v) sum += std::exp(row[v] - mx);
    total += mx + std::log(sum) - row[ids[i + 1]];
  }
  return total;
}

}  // namespace moemesh
