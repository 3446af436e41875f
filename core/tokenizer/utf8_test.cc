#include "core/tokenizer/utf8.h"

#include "gtest/gtest.h"

namespace moemesh {
namespace {

TEST(Utf8Test, FirstInvalid) {
  EXPECT_EQ(FirstInvalidUtf8("plain"), 5u);
  EXPECT_EQ(FirstInvalidUtf8("\xE4\xBA\xBA ok"), 6u);
  EXPECT_EQ(FirstInvalidUtf8("ab\xFF"), 2u);
  EXPECT_EQ(FirstInvalidUtf8("\xC0\x80"), 0u);          // overlong
  EXPECT_EQ(FirstInvalidUtf8("\xED\xA0\x80"), 0u);      // surrogate
  EXPECT_EQ(FirstInvalidUtf8("\xF4\x90\x80\x80"), 0u);  // > U+10FFFF
  EXPECT_EQ(FirstInvalidUtf8("x\xE4\xBA"), 1u);         // truncated
}

TEST(Utf8Test, CompletePrefixHoldsBackOnlyAnUnfinishedTail) {
  EXPECT_EQ(CompleteUtf8Prefix("ab\xE4\xBA"), 2u);
  EXPECT_EQ(CompleteUtf8Prefix("ab\xE4\xBA\xBA"), 5u);
  EXPECT_EQ(CompleteUtf8Prefix("ab\xFF"), 3u);  // invalid, not incomplete
}

TEST(Utf8Test, LossyReplacesLikeRust) {
  EXPECT_EQ(Utf8Lossy("a\xFF" "b"), "a\xEF\xBF\xBD" "b");
  // A truncated 3-byte sequence is one replacement, as Rust does.
  EXPECT_EQ(Utf8Lossy("\xE4\xBA" "x"), "\xEF\xBF\xBD" "x");
  EXPECT_EQ(Utf8Lossy("\xF0\x9F\x98"), "\xEF\xBF\xBD");
  EXPECT_EQ(Utf8Lossy("\xC0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(Utf8Test, RoundTripsCodePoints) {
  for (char32_t cp : {U'a', U'\u00e9', U'\u4eba', U'\U0001F600'}) {
    std::string s;
    AppendUtf8(cp, &s);
    size_t pos = 0;
    EXPECT_EQ(NextCodePoint(s, &pos), cp);
    EXPECT_EQ(pos, s.size());
  }
}

}  // namespace
}  // namespace moemesh
