#ifndef MOEMESH_CORE_TOKENIZER_UNICODE_H_
#define MOEMESH_CORE_TOKENIZER_UNICODE_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moemesh {

// Unicode operations with the semantics of Rust's standard library, which
// Hugging Face tokenizers uses. Inputs must be valid UTF-8.

enum class NormalForm { kNfc, kNfd, kNfkc, kNfkd };
absl::StatusOr<std::string> Normalize(absl::string_view s, NormalForm form);

// Rust's char::to_lowercase applied to every character.
std::string Lowercase(absl::string_view s);

// Rust's char::is_whitespace (the White_Space property).
bool IsWhitespace(char32_t c);
// Rust's char::is_alphanumeric (Alphabetic or Numeric).
bool IsAlphanumeric(char32_t c);
// The Unicode \w of Rust's regex crate: Alphabetic, marks, decimal digits,
// connector punctuation and the joiners.
bool IsWordChar(char32_t c);

}  // namespace moemesh

#endif  // MOEMESH_CORE_TOKENIZER_UNICODE_H_
