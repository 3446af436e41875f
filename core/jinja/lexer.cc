#include "core/jinja/lexer.h"

#include <cctype>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/tokenizer/utf8.h"

namespace moemesh::jinja {
namespace {

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsNameStart(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool IsNameChar(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

absl::Status SyntaxError(int line, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("template syntax error, line ", line, ": ", message));
}

// Jinja2 splits lines on \r\n, \r and \n and joins them with \n.
std::string NormalizeNewlines(absl::string_view s, bool keep_trailing_newline) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\r') {
      out += '\n';
      if (i + 1 < s.size() && s[i + 1] == '\n') ++i;
    } else {
      out += s[i];
    }
  }
  if (!keep_trailing_newline && !out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// Python's "unicode-escape" decoding of a string literal's body.
std::string Unescape(absl::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out += s[i];
      continue;
    }
    const char c = s[++i];
    auto hex = [&](size_t digits) -> bool {
      char32_t cp = 0;
      for (size_t k = 1; k <= digits; ++k) {
        if (i + k >= s.size() || !std::isxdigit(static_cast<unsigned char>(s[i + k]))) return false;
        const char d = static_cast<char>(std::tolower(static_cast<unsigned char>(s[i + k])));
        cp = cp * 16 + static_cast<char32_t>(d <= '9' ? d - '0' : d - 'a' + 10);
      }
      if (cp > 0x10FFFF) return false;
      AppendUtf8(cp, &out);
      i += digits;
      return true;
    };
    switch (c) {
      case '\n': break;
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'v': out += '\v'; break;
      case 'x':
        if (!hex(2)) out += "\\x";
        break;
      case 'u':
        if (!hex(4)) out += "\\u";
        break;
      case 'U':
        if (!hex(8)) out += "\\U";
        break;
      default:
        if (c >= '0' && c <= '7') {
          int v = 0, n = 0;
          while (n < 3 && i < s.size() && s[i] >= '0' && s[i] <= '7') v = v * 8 + (s[i++] - '0'), ++n;
          --i;
          AppendUtf8(static_cast<char32_t>(v), &out);
        } else {
          out += '\\';
          out += c;
        }
    }
  }
  return out;
}

class Lexer {
 public:
  Lexer(std::string source, const LexerOptions& options) : s_(std::move(source)), options_(options) {}

  absl::StatusOr<std::vector<Token>> Run() {
    while (pos_ < s_.size()) {
      size_t tag = s_.find('{', pos_);
      while (tag != std::string::npos && (tag + 1 >= s_.size() || (s_[tag + 1] != '{' && s_[tag + 1] != '%' &&
                                                                   s_[tag + 1] != '#'))) {
        tag = s_.find('{', tag + 1);
      }
      if (tag == std::string::npos) {
        Data(s_.substr(pos_));
        pos_ = s_.size();
        break;
      }
      std::string text = s_.substr(pos_, tag - pos_);
      const char kind = s_[tag + 1];
      const char sign = tag + 2 < s_.size() && (s_[tag + 2] == '-' || s_[tag + 2] == '+') ? s_[tag + 2] : 0;
      size_t raw_end = 0;
      const bool raw = kind == '%' && RawBegin(tag, &raw_end);
      ApplyLeftStrip(&text, sign, kind != '{');
      Data(std::move(text));
      line_ += Lines(pos_, tag);
      pos_ = tag + 2 + (sign ? 1 : 0);
      line_starting_ = false;
      if (raw) {
        line_ += Lines(pos_, raw_end);
        pos_ = raw_end;
        if (absl::Status st = RawBody(); !st.ok()) return st;
      } else if (kind == '#') {
        if (absl::Status st = Comment(); !st.ok()) return st;
      } else if (absl::Status st = Tag(kind == '%'); !st.ok()) {
        return st;
      }
    }
    tokens_.push_back({Token::Type::kEnd, "", line_});
    return std::move(tokens_);
  }

 private:
  int Lines(size_t from, size_t to) const {
    int n = 0;
    for (size_t i = from; i < to && i < s_.size(); ++i) n += s_[i] == '\n';
    return n;
  }

  void Data(std::string text) {
    if (!text.empty()) tokens_.push_back({Token::Type::kData, std::move(text), line_});
  }

  // `-` strips all whitespace before the tag; otherwise lstrip_blocks strips
  // a block or comment tag's indentation when only spaces precede it on its
  // line.
  void ApplyLeftStrip(std::string* text, char sign, bool block_or_comment) const {
    if (sign == '-') {
      size_t end = text->size();
      while (end > 0 && IsSpace((*text)[end - 1])) --end;
      text->resize(end);
    } else if (sign != '+' && options_.lstrip_blocks && block_or_comment) {
      const size_t nl = text->rfind('\n');
      const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
      if (l_pos > 0 || line_starting_) {
        bool blank = true;
        for (size_t i = l_pos; i < text->size(); ++i) blank = blank && IsSpace((*text)[i]);
        if (blank) text->resize(l_pos);
      }
    }
  }

  // The end of a block tag at pos_: `+%}`, `-%}` and following whitespace,
  // or `%}` and, with trim_blocks, one newline. Returns false if none.
  bool BlockEnd(absl::string_view close) {
    const std::string c(close);
    const bool variable = close == "}}";  // no `+`, no trim_blocks
    if (!variable && s_.compare(pos_, c.size() + 1, "+" + c) == 0) {
      pos_ += c.size() + 1;
      line_starting_ = false;
      return true;
    }
    if (s_.compare(pos_, c.size() + 1, "-" + c) == 0) {
      const size_t start = pos_;
      pos_ += c.size() + 1;
      while (pos_ < s_.size() && IsSpace(s_[pos_])) ++pos_;
      line_starting_ = s_[pos_ - 1] == '\n';
      line_ += Lines(start, pos_);
      return true;
    }
    if (s_.compare(pos_, c.size(), c) == 0) {
      pos_ += c.size();
      line_starting_ = false;
      if (options_.trim_blocks && !variable && pos_ < s_.size() && s_[pos_] == '\n') {
        ++pos_;
        ++line_;
        line_starting_ = true;
      }
      return true;
    }
    return false;
  }

  bool RawBegin(size_t tag, size_t* end) const {
    size_t p = tag + 2;
    if (p < s_.size() && (s_[p] == '-' || s_[p] == '+')) ++p;
    while (p < s_.size() && IsSpace(s_[p])) ++p;
    if (s_.compare(p, 3, "raw") != 0) return false;
    p += 3;
    while (p < s_.size() && IsSpace(s_[p])) ++p;
    if (s_.compare(p, 3, "-%}") == 0) {
      p += 3;
      while (p < s_.size() && IsSpace(s_[p])) ++p;
    } else if (s_.compare(p, 2, "%}") == 0) {
      p += 2;
    } else {
      return false;
    }
    *end = p;
    return true;
  }

  absl::Status RawBody() {
    for (size_t tag = s_.find("{%", pos_); tag != std::string::npos; tag = s_.find("{%", tag + 1)) {
      size_t p = tag + 2;
      const char sign = p < s_.size() && (s_[p] == '-' || s_[p] == '+') ? s_[p] : 0;
      if (sign) ++p;
      while (p < s_.size() && IsSpace(s_[p])) ++p;
      if (s_.compare(p, 6, "endraw") != 0) continue;
      p += 6;
      while (p < s_.size() && IsSpace(s_[p])) ++p;
      std::string text = s_.substr(pos_, tag - pos_);
      ApplyLeftStrip(&text, sign, true);
      Data(std::move(text));
      line_ += Lines(pos_, p);
      pos_ = p;
      if (!BlockEnd("%}")) return SyntaxError(line_, "expected '%}' after 'endraw'");
      return absl::OkStatus();
    }
    return SyntaxError(line_, "missing end of raw directive");
  }

  absl::Status Comment() {
    for (size_t p = pos_; p < s_.size(); ++p) {
      const size_t start = pos_;
      pos_ = p;
      if (BlockEnd("#}")) {
        line_ += Lines(start, p);
        return absl::OkStatus();
      }
      pos_ = start;
    }
    return SyntaxError(line_, "missing end of comment tag");
  }

  // The tokens of a `{{ ... }}` or `{% ... %}` tag, through its end.
  absl::Status Tag(bool block) {
    const int begin_line = line_;
    tokens_.push_back({block ? Token::Type::kBlockBegin : Token::Type::kVariableBegin, "", line_});
    std::vector<char> balance;
    while (true) {
      if (pos_ >= s_.size()) {
        return SyntaxError(begin_line, block ? "unexpected end of template, expected '%}'"
                                             : "unexpected end of template, expected '}}'");
      }
      if (balance.empty()) {
        const int line = line_;
        if (BlockEnd(block ? "%}" : "}}")) {
          tokens_.push_back({block ? Token::Type::kBlockEnd : Token::Type::kVariableEnd, "", line});
          return absl::OkStatus();
        }
      }
      const char c = s_[pos_];
      if (IsSpace(c)) {
        line_ += c == '\n';
        ++pos_;
        continue;
      }
      if (IsDigit(c)) {
        Number();
        continue;
      }
      if (IsNameStart(c)) {
        const size_t start = pos_;
        while (pos_ < s_.size() && IsNameChar(s_[pos_])) ++pos_;
        tokens_.push_back({Token::Type::kName, s_.substr(start, pos_ - start), line_});
        continue;
      }
      if (c == '\'' || c == '"') {
        if (absl::Status st = String(c); !st.ok()) return st;
        continue;
      }
      static constexpr const char* kOperators[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%",
                                                   "~",  "[",  "]",  "(",  ")",  "{",  "}", ">", "<", "=", ".",
                                                   ":",  "|",  ",",  ";"};
      bool matched = false;
      for (const char* op : kOperators) {
        const size_t n = std::char_traits<char>::length(op);
        if (s_.compare(pos_, n, op) != 0) continue;
        const std::string o(op);
        if (o == "(" || o == "[" || o == "{") {
          balance.push_back(o == "(" ? ')' : o == "[" ? ']' : '}');
        } else if (o == ")" || o == "]" || o == "}") {
          if (balance.empty()) return SyntaxError(line_, absl::StrCat("unexpected '", o, "'"));
          if (balance.back() != o[0]) {
            return SyntaxError(line_, absl::StrCat("unexpected '", o, "', expected '", std::string(1, balance.back()),
                                                   "'"));
          }
          balance.pop_back();
        }
        tokens_.push_back({Token::Type::kOperator, o, line_});
        pos_ += n;
        matched = true;
        break;
      }
      if (!matched) return SyntaxError(line_, absl::StrCat("unexpected char '", std::string(1, c), "'"));
    }
  }

  // Integers and floats, with `_` between digits; `1.5`, `1e3`, `1.5e-3`.
  void Number() {
    auto digits = [&](size_t p) {
      size_t q = p;
      while (q < s_.size() && (IsDigit(s_[q]) || (s_[q] == '_' && q + 1 < s_.size() && IsDigit(s_[q + 1]) &&
                                                  q > p))) {
        ++q;
      }
      return q;
    };
    const size_t start = pos_;
    size_t p = digits(pos_);
    bool is_float = false;
    const bool after_dot = start > 0 && s_[start - 1] == '.';
    if (!after_dot) {
      if (p + 1 < s_.size() && s_[p] == '.' && IsDigit(s_[p + 1])) {
        p = digits(p + 1);
        is_float = true;
      }
      if (p < s_.size() && (s_[p] == 'e' || s_[p] == 'E')) {
        size_t q = p + 1;
        if (q < s_.size() && (s_[q] == '+' || s_[q] == '-')) ++q;
        if (q < s_.size() && IsDigit(s_[q])) {
          p = digits(q);
          is_float = true;
        }
      }
    }
    std::string text;
    for (size_t i = start; i < p; ++i) {
      if (s_[i] != '_') text += s_[i];
    }
    tokens_.push_back({is_float ? Token::Type::kFloat : Token::Type::kInteger, text, line_});
    pos_ = p;
  }

  absl::Status String(char quote) {
    const int line = line_;
    size_t p = pos_ + 1;
    while (p < s_.size() && s_[p] != quote) {
      if (s_[p] == '\\') ++p;
      ++p;
    }
    if (p >= s_.size()) return SyntaxError(line, "unterminated string");
    const std::string body = s_.substr(pos_ + 1, p - pos_ - 1);
    line_ += Lines(pos_, p);
    tokens_.push_back({Token::Type::kString, Unescape(body), line});
    pos_ = p + 1;
    return absl::OkStatus();
  }

  const std::string s_;
  const LexerOptions options_;
  size_t pos_ = 0;
  int line_ = 1;
  bool line_starting_ = true;
  std::vector<Token> tokens_;
};

}  // namespace

absl::StatusOr<std::vector<Token>> Tokenize(absl::string_view source, const LexerOptions& options) {
  return Lexer(NormalizeNewlines(source, options.keep_trailing_newline), options).Run();
}

}  // namespace moemesh::jinja
