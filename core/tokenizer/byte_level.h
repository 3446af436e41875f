#ifndef MOEMESH_CORE_TOKENIZER_BYTE_LEVEL_H_
#define MOEMESH_CORE_TOKENIZER_BYTE_LEVEL_H_

#include <string>

#include "absl/strings/string_view.h"

namespace moemesh {

// GPT-2's reversible map from bytes to printable code points, used by
// byte-level BPE (GPT-2, Llama 3, Qwen, DeepSeek).

// Each byte of `bytes` as its UTF-8-encoded stand-in character.
std::string BytesToByteLevel(absl::string_view bytes);

// Maps each character of `text` back to its byte. Returns false, leaving
// `out` unspecified, if some character is not a stand-in.
bool ByteLevelToBytes(absl::string_view text, std::string* out);

}  // namespace moemesh

#endif  // MOEMESH_CORE_TOKENIZER_BYTE_LEVEL_H_
