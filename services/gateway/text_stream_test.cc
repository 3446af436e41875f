#include "services/gateway/text_stream.h"

#include <random>

#include "core/tokenizer/tokenizer.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

const char* kTexts[] = {
    "The quick brown fox jumps over the lazy dog. Then it sleeps.",
    "你好，世界！今天天气很好。我们去公园散步吧。",
    "Mixed: café, naïve, 東京 and emoji 🎉🎉 in one line.\nSecond line.",
};

class TextStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto t = LoadTokenizer("models/fortune-moe/tokenizer.json");
    ASSERT_TRUE(t.ok()) << t.status();
    tok_ = std::move(*t);
  }
  // Streams `ids` token by token; returns the concatenated text.
  std::string Stream(const std::vector<int>& ids, const std::vector<std::string>& stops, bool* stopped,
                     size_t* tokens_used) {
    TextStream ts(tok_.get(), false, stops);
    std::string out;
    *tokens_used = ids.size();
    for (size_t i = 0; i < ids.size(); ++i) {
      auto piece = ts.Add(ids[i]);
      EXPECT_TRUE(piece.ok());
      out += *piece;
      if (ts.stopped()) {
        *tokens_used = i + 1;
        break;
      }
    }
    auto rest = ts.Finish();
    EXPECT_TRUE(rest.ok());
    out += *rest;
    *stopped = ts.stopped();
    return out;
  }
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(TextStreamTest, WithoutStopsTheTextIsTheDecode) {
  for (const char* text : kTexts) {
    auto ids = tok_->Encode(text, false);
    ASSERT_TRUE(ids.ok());
    bool stopped;
    size_t used;
    EXPECT_EQ(Stream(*ids, {}, &stopped, &used), *tok_->Decode(*ids, false));
    EXPECT_FALSE(stopped);
    EXPECT_EQ(Stream(*ids, {"never appears"}, &stopped, &used), *tok_->Decode(*ids, false));
    EXPECT_FALSE(stopped);
  }
}

// Any substring of the text used as a stop sequence (most straddle token
// and character boundaries) cuts the text right before its first match.
TEST_F(TextStreamTest, StopsAtTheFirstMatchOfAnyStopSequence) {
  std::mt19937 rng(5);
  for (const char* text : kTexts) {
    auto ids = tok_->Encode(text, false);
    ASSERT_TRUE(ids.ok());
    const std::string full = *tok_->Decode(*ids, false);
    for (int trial = 0; trial < 200; ++trial) {
      size_t a = rng() % full.size(), len = 1 + rng() % 8;
      // Whole characters only: move off continuation bytes.
      while (a < full.size() && (full[a] & 0xC0) == 0x80) ++a;
      size_t b = std::min(full.size(), a + len);
      while (b < full.size() && (full[b] & 0xC0) == 0x80) ++b;
      if (a >= b) continue;
      std::string stop = full.substr(a, b - a);
      std::vector<std::string> stops = {"\x01unused", stop};
      bool stopped;
      size_t used;
      std::string got = Stream(*ids, stops, &stopped, &used);
      EXPECT_TRUE(stopped) << stop;
      EXPECT_EQ(got, full.substr(0, full.find(stop))) << "stop \"" << stop << "\"";
      // The stop completed with the last token used.
      std::string upto = *tok_->Decode(std::vector<int>(ids->begin(), ids->begin() + used), false);
      EXPECT_NE(upto.find(stop), std::string::npos);
    }
  }
}

TEST_F(TextStreamTest, HoldsBackOnlyWhatCouldStartAStop) {
  auto ids = tok_->Encode("Hello world, hello moon", false);
  ASSERT_TRUE(ids.ok());
  TextStream ts(tok_.get(), false, {"moon!"});
  std::string sent;
  for (int id : *ids) sent += *ts.Add(id);
  EXPECT_EQ(sent, "Hello world, hello ");  // "moon" may still become "moon!"
  EXPECT_EQ(*ts.Finish(), "moon");
  EXPECT_FALSE(ts.stopped());
}

}  // namespace
}  // namespace moemesh
