#ifndef MOEMESH_CORE_TOKENIZER_BATCH_ENCODE_H_
#define MOEMESH_CORE_TOKENIZER_BATCH_ENCODE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/tokenizer/tokenizer.h"

namespace moemesh {

// Encodes `texts` on up to `threads` threads (each takes the next text in
// turn; the word cache is shared), giving exactly what Encode gives text by
// text, in order. The first error (in text order) fails the batch and names
// the text's index.
absl::StatusOr<std::vector<std::vector<int>>> EncodeBatch(const Tokenizer& tokenizer,
                                                          absl::Span<const std::string> texts,
                                                          bool add_special_tokens, int threads);

}  // namespace moemesh

#endif  // MOEMESH_CORE_TOKENIZER_BATCH_ENCODE_H_
