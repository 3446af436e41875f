#ifndef MOEMESH_CORE_ENGINE_PERPLEXITY_H_
#define MOEMESH_CORE_ENGINE_PERPLEXITY_H_

#include "absl/types/span.h"

namespace moemesh {

// Sum over positions i < n - 1 of -log softmax(logits[i])[ids[i + 1]], in
// double precision. `logits` is [ids.size(), vocab]: the logits the model
// gave after each token.
double SequenceNll(const float* logits, int vocab, absl::Span<const int> ids);

}  // namespace moemesh

#endif  // MOEMESH_CORE_ENGINE_PERPLEXITY_H_
