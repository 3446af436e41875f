#ifndef MOEMESH_CORE_TOKENIZER_PRE_TOKENIZER_H_
#define MOEMESH_CORE_TOKENIZER_PRE_TOKENIZER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json_fwd.hpp"

namespace moemesh {

// A piece of the input during pre-tokenization: text still to split, or a
// token already decided (an added token).
struct Piece {
  std::string text;
  int token = -1;         // >= 0: an added token's id
  bool at_start = false;  // begins at offset 0 of the original input
};

// A tokenizer.json pre-tokenizer: splits text pieces into words for the
// model; added-token pieces pass through. Immutable; thread-safe.
class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual absl::Status Apply(std::vector<Piece>* pieces) const = 0;
};

// ByteLevel, Split, Sequence, Metaspace, Digits, Punctuation, Whitespace,
// WhitespaceSplit. UNIMPLEMENTED names any other type.
absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const nlohmann::json& j,
                                                                absl::string_view source);

}  // namespace moemesh

#endif  // MOEMESH_CORE_TOKENIZER_PRE_TOKENIZER_H_
