#ifndef MOEMESH_CORE_JINJA_LEXER_H_
#define MOEMESH_CORE_JINJA_LEXER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moemesh::jinja {

struct Token {
  enum class Type { kData, kVariableBegin, kVariableEnd, kBlockBegin, kBlockEnd, kName, kString, kInteger, kFloat,
                    kOperator, kEnd };
  Type type;
  std::string text;  // data, a name, an operator, a string's decoded value, a number's digits
  int line;
};

struct LexerOptions {
  bool trim_blocks = false;           // drop the newline after a block tag
  bool lstrip_blocks = false;         // drop a line's indentation before a block tag
  bool keep_trailing_newline = false;
};

// Splits a template into tokens exactly where Jinja2's lexer does, with its
// whitespace control (`-` and `+` signs, trim_blocks, lstrip_blocks) already
// applied to the data; comments are dropped and `{% raw %}` blocks become
// data. Ends with a kEnd token.
absl::StatusOr<std::vector<Token>> Tokenize(absl::string_view source, const LexerOptions& options);

}  // namespace moemesh::jinja

#endif  // MOEMESH_CORE_JINJA_LEXER_H_
