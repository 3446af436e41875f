#ifndef MOEMESH_CORE_TOKENIZER_REGEX_H_
#define MOEMESH_CORE_TOKENIZER_REGEX_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moemesh {

// A compiled PCRE2 pattern with Unicode semantics (UTF, UCP), JIT-compiled
// where available. PCRE2 is used because tokenizer patterns need
// look-ahead such as \s+(?!\S), which RE2 lacks. Thread-safe.
class Regex {
 public:
  // INVALID_ARGUMENT with PCRE2's message and offset for a bad pattern.
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(absl::string_view pattern);
  ~Regex();

  // Byte ranges [begin, end) of the successive non-overlapping matches in
  // `text` (valid UTF-8). Empty matches are skipped.
  absl::StatusOr<std::vector<std::pair<size_t, size_t>>> FindAll(absl::string_view text) const;

 private:
  Regex() = default;
  void* code_ = nullptr;  // pcre2_code_8
  std::string pattern_;
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_TOKENIZER_REGEX_H_
