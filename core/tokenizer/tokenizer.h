#ifndef MOEMESH_CORE_TOKENIZER_TOKENIZER_H_
#define MOEMESH_CORE_TOKENIZER_TOKENIZER_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace moemesh {

// Text <-> token ids, agreeing with the Hugging Face `tokenizers` library on
// the files it loads. Implementations are immutable after loading and safe
// to use from many threads.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // INVALID_ARGUMENT when `text` is not valid UTF-8.
  virtual absl::StatusOr<std::vector<int>> Encode(absl::string_view text,
                                                  bool add_special_tokens) const = 0;
  // Invalid UTF-8 produced by the tokens becomes U+FFFD, as in Hugging
  // Face's decode. INVALID_ARGUMENT for ids outside the vocabulary.
  virtual absl::StatusOr<std::string> Decode(absl::Span<const int> ids,
                                             bool skip_special_tokens) const = 0;

  virtual int vocab_size() const = 0;
  virtual std::optional<int> TokenToId(absl::string_view token) const = 0;
  virtual bool IsSpecial(int id) const = 0;
};

// Loads a Hugging Face tokenizer.json, or a SentencePiece .model file; given
// a model directory, its tokenizer.json or else its tokenizer.model. Errors
// name the file and the component that is malformed or unsupported.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path);

}  // namespace moemesh

#endif  // MOEMESH_CORE_TOKENIZER_TOKENIZER_H_
