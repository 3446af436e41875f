#ifndef MOEMESH_CORE_TOKENIZER_SENTENCEPIECE_TOKENIZER_H_
#define MOEMESH_CORE_TOKENIZER_SENTENCEPIECE_TOKENIZER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/tokenizer/tokenizer.h"

namespace moemesh {

// A SentencePiece .model file through libsentencepiece. Encoding with
// special tokens prepends BOS when the model defines one; decoding skips
// control tokens when asked to.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePiece(const std::string& path);

}  // namespace moemesh

#endif  // MOEMESH_CORE_TOKENIZER_SENTENCEPIECE_TOKENIZER_H_
