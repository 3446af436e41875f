#ifndef MOEMESH_CORE_TOKENIZER_NORMALIZER_H_
#define MOEMESH_CORE_TOKENIZER_NORMALIZER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json_fwd.hpp"

namespace moemesh {

// A tokenizer.json normalizer: rewrites a piece of input text before
// pre-tokenization. Immutable; thread-safe.
class TextNormalizer {
 public:
  virtual ~TextNormalizer() = default;
  virtual absl::StatusOr<std::string> Apply(std::string text) const = 0;
};

// Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Strip, Prepend, Replace.
// UNIMPLEMENTED names any other type; `source` names the file.
absl::StatusOr<std::unique_ptr<TextNormalizer>> ParseNormalizer(const nlohmann::json& j,
                                                                absl::string_view source);

}  // namespace moemesh

#endif  // MOEMESH_CORE_TOKENIZER_NORMALIZER_H_
