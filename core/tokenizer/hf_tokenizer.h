#ifndef MOEMESH_CORE_TOKENIZER_HF_TOKENIZER_H_
#define MOEMESH_CORE_TOKENIZER_HF_TOKENIZER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/tokenizer/tokenizer.h"

namespace moemesh {

// Parses the text of a Hugging Face tokenizer.json. `source` names the file
// in errors. Supported today: model BPE (byte-level and with byte
// fallback); pre-tokenizers ByteLevel, Split, Sequence; post-processors
// TemplateProcessing, ByteLevel, Sequence; decoder ByteLevel; added and
// special tokens. Any other component type is an UNIMPLEMENTED error that
// names it.
absl::StatusOr<std::unique_ptr<Tokenizer>> ParseHfTokenizer(absl::string_view json_text,
                                                            absl::string_view source);

}  // namespace moemesh

#endif  // MOEMESH_CORE_TOKENIZER_HF_TOKENIZER_H_
