#include "core/tokenizer/byte_level.h"

#include <array>
#include <unordered_map>

#include "core/tokenizer/utf8.h"

namespace moemesh {
namespace {

struct Tables {
  std::array<std::string, 256> byte_to_char;
  std::unordered_map<char32_t, unsigned char> char_to_byte;
  Tables() {
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      char32_t cp = printable ? static_cast<char32_t>(b) : next++;
      AppendUtf8(cp, &byte_to_char[b]);
      char_to_byte[cp] = static_cast<unsigned char>(b);
    }
  }
};

const Tables& GetTables() {
  static const Tables* t = new Tables;
  return *t;
}

}  // namespace

std::string BytesToByteLevel(absl::string_view bytes) {
  const Tables& t = GetTables();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) out += t.byte_to_char[b];
  return out;
}

bool ByteLevelToBytes(absl::string_view text, std::string* out) {
  const Tables& t = GetTables();
  size_t pos = 0;
  while (pos < text.size()) {
    auto it = t.char_to_byte.find(NextCodePoint(text, &pos));
    if (it == t.char_to_byte.end()) return false;
    out->push_back(static_cast<char>(it->second));
  }
  return true;
}

}  // namespace moemesh
