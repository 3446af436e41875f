#ifndef MOEMESH_CORE_TOKENIZER_DECODER_H_
#define MOEMESH_CORE_TOKENIZER_DECODER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json_fwd.hpp"

namespace moemesh {

// A tokenizer.json decoder: turns token strings back into text pieces (the
// text is their concatenation). Every output string is valid UTF-8.
// Immutable; thread-safe.
class TokenDecoder {
 public:
  virtual ~TokenDecoder() = default;
  virtual std::vector<std::string> DecodeChain(std::vector<std::string> tokens) const = 0;
};

// ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence.
// UNIMPLEMENTED names any other type.
absl::StatusOr<std::unique_ptr<TokenDecoder>> ParseDecoder(const nlohmann::json& j,
                                                           absl::string_view source);

}  // namespace moemesh

#endif  // MOEMESH_CORE_TOKENIZER_DECODER_H_
