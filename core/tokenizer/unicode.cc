#include "core/tokenizer/unicode.h"

#include <utf8proc.h>

#include <algorithm>
#include <cstdlib>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "core/tokenizer/regex.h"
#include "core/tokenizer/utf8.h"

namespace moemesh {

namespace {

// Characters Hugging Face tokenizers leaves alone in every normal form:
// neither decomposed nor reordered (it takes them for starters).
constexpr char32_t kHfNoDecomposition[] = {
#include "core/tokenizer/hf_unicode_exceptions.inc"
};

bool IsHfException(char32_t c) {
  return std::binary_search(std::begin(kHfNoDecomposition), std::end(kHfNoDecomposition), c);
}

absl::StatusOr<std::string> Utf8procNormalize(absl::string_view s, int options) {
  if (s.empty()) return std::string();
  utf8proc_uint8_t* out = nullptr;
  utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                    static_cast<utf8proc_ssize_t>(s.size()), &out,
                                    static_cast<utf8proc_option_t>(options));
  if (n < 0) {
    return absl::InvalidArgumentError(absl::StrCat("Unicode normalization failed: ", utf8proc_errmsg(n)));
  }
  std::string result(reinterpret_cast<char*>(out), static_cast<size_t>(n));
  std::free(out);
  return result;
}

}  // namespace

absl::StatusOr<std::string> Normalize(absl::string_view s, NormalForm form) {
  // ASCII is invariant under every normal form.
  if (std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; })) {
    return std::string(s);
  }
  int options = UTF8PROC_STABLE;
  switch (form) {
    case NormalForm::kNfc: options |= UTF8PROC_COMPOSE; break;
    case NormalForm::kNfd: options |= UTF8PROC_DECOMPOSE; break;
    case NormalForm::kNfkc: options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    case NormalForm::kNfkd: options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
  }
  // Normalize the runs between characters that Hugging Face's (older)
  // tables do not know; those stay as they are. To it they are starters,
  // which nothing reorders across, so splitting there changes nothing else.
  std::string out;
  size_t run = 0, pos = 0;
  while (pos < s.size()) {
    size_t start = pos;
    char32_t c = NextCodePoint(s, &pos);
    if (c < kHfNoDecomposition[0] || !IsHfException(c)) continue;
    if (absl::StatusOr<std::string> r = Utf8procNormalize(s.substr(run, start - run), options); r.ok()) {
      out += *r;
    } else {
      return r.status();
    }
    out.append(s.data() + start, pos - start);
    run = pos;
  }
  if (run == 0) return Utf8procNormalize(s, options);
  absl::StatusOr<std::string> r = Utf8procNormalize(s.substr(run), options);
  if (!r.ok()) return r.status();
  return out + *r;
}

std::string Lowercase(absl::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (pos < s.size()) {
    char32_t c = NextCodePoint(s, &pos);
    if (c == 0x130) {  // the one unconditional multi-character lowercase mapping
      out += "i\xCC\x87";
      continue;
    }
    AppendUtf8(static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))), &out);
  }
  return out;
}

bool IsWhitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

bool IsAlphanumeric(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
    case UTF8PROC_CATEGORY_MC:  // most spacing marks are Other_Alphabetic
      return true;
    default:
      return false;
  }
}

bool IsWordChar(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  static const Regex* word = [] {
    auto re = Regex::Compile(R"(\A[\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}])");
    return re.ok() ? re->release() : nullptr;
  }();
  std::string s;
  AppendUtf8(c, &s);
  auto m = word->FindAll(s);
  return m.ok() && !m->empty();
}

}  // namespace moemesh
