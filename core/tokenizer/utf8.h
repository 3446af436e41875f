#ifndef MOEMESH_CORE_TOKENIZER_UTF8_H_
#define MOEMESH_CORE_TOKENIZER_UTF8_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace moemesh {

// Offset of the first byte that does not start a valid UTF-8 sequence
// (overlongs, surrogates and code points past U+10FFFF are invalid), or
// s.size() when all of `s` is valid.
size_t FirstInvalidUtf8(absl::string_view s);

// Length of the longest prefix of `s` that is complete: everything except a
// trailing sequence that could still be completed by more bytes.
size_t CompleteUtf8Prefix(absl::string_view s);

// Like Rust's String::from_utf8_lossy: each maximal invalid subsequence
// becomes U+FFFD.
std::string Utf8Lossy(absl::string_view s);

// Appends the UTF-8 encoding of code point `cp`.
void AppendUtf8(char32_t cp, std::string* out);

// Decodes one code point at s[*pos], advancing *pos; s must be valid UTF-8.
char32_t NextCodePoint(absl::string_view s, size_t* pos);

}  // namespace moemesh

#endif  // MOEMESH_CORE_TOKENIZER_UTF8_H_
