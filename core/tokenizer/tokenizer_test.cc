#include <string>
#include <vector>

#include "core/common/file_util.h"
#include "core/tokenizer/batch_encode.h"
#include "core/tokenizer/bpe.h"
#include "core/tokenizer/hf_tokenizer.h"
#include "core/tokenizer/streaming_detokenizer.h"
#include "core/tokenizer/tokenizer.h"
#include "core/tokenizer/unicode.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

using Json = nlohmann::json;

struct Case {
  std::string text, decoded;
  std::vector<int> ids, ids_with_special;
};

// Reference encodings made by the Hugging Face tokenizers library
// (tools/hf_tokenizers/make_reference.js).
std::vector<Case> LoadCases(const std::string& path) {
  auto text = ReadFile(path);
  EXPECT_TRUE(text.ok()) << text.status();
  std::vector<Case> cases;
  size_t start = 0;
  while (start < text->size()) {
    size_t end = text->find('\n', start);
    if (end == std::string::npos) end = text->size();
    if (end > start) {
      Json j = Json::parse(text->substr(start, end - start));
      cases.push_back({j["text"], j["decoded"], j["ids"], j["ids_with_special"]});
    }
    start = end + 1;
  }
  return cases;
}

class DemoTokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto t = LoadTokenizer("models/fortune-moe");
    ASSERT_TRUE(t.ok()) << t.status();
    tok_ = std::move(*t);
  }
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(DemoTokenizerTest, MatchesHuggingFaceOnEveryReferenceString) {
  std::vector<Case> cases = LoadCases("tests/fixtures/tokenizers/fortune-moe.jsonl");
  ASSERT_GT(cases.size(), 250u);
  int mismatches = 0;
  for (const Case& c : cases) {
    auto ids = tok_->Encode(c.text, false);
    ASSERT_TRUE(ids.ok()) << ids.status();
    if (*ids != c.ids) ++mismatches;
    EXPECT_EQ(*ids, c.ids) << "text: " << c.text;
    auto with = tok_->Encode(c.text, true);
    ASSERT_TRUE(with.ok());
    EXPECT_EQ(*with, c.ids_with_special) << "text: " << c.text;
    auto decoded = tok_->Decode(c.ids, false);
    ASSERT_TRUE(decoded.ok());
    EXPECT_EQ(*decoded, c.decoded);
  }
  EXPECT_EQ(mismatches, 0);
}

// The word cache: past its capacity (2,000 distinct words more than it
// holds), words come out the same whether cached, computed, or computed
// after the cache filled up, in any order.
TEST_F(DemoTokenizerTest, CachedWordsEncodeAsComputedOnes) {
  std::vector<std::string> words;
  uint64_t x = 88172645463325252ull;
  for (size_t i = 0; i < BpeModel::kCacheWords + 2000; ++i) {
    std::string w = " ";
    for (size_t n = 4 + i % 8; n > 0; --n) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      w += static_cast<char>('a' + x % 26);
    }
    words.push_back(w);
  }
  std::vector<std::vector<int>> first;
  for (const std::string& w : words) {
    auto ids = tok_->Encode(w, false);
    ASSERT_TRUE(ids.ok()) << ids.status();
    first.push_back(*ids);
  }
  auto fresh = LoadTokenizer("models/fortune-moe");
  ASSERT_TRUE(fresh.ok());
  for (int i = static_cast<int>(words.size()) - 1; i >= 0; --i) {
    EXPECT_EQ(*tok_->Encode(words[i], false), first[i]) << words[i];
    EXPECT_EQ(*(*fresh)->Encode(words[i], false), first[i]) << words[i];
  }
  // A whole text: the same ids again, now that its words are cached.
  std::string text;
  for (int i = 0; i < 2000; ++i) text += words[i];
  EXPECT_EQ(*tok_->Encode(text, false), *(*fresh)->Encode(text, false));
}

// A batch on several threads gives what Encode gives text by text; a bad
// text fails the batch, named by its index.
TEST_F(DemoTokenizerTest, BatchOnThreadsEqualsOneByOne) {
  std::vector<std::string> texts;
  for (const Case& c : LoadCases("tests/fixtures/tokenizers/fortune-moe.jsonl")) texts.push_back(c.text);
  for (int threads : {1, 2, 4}) {
    auto batch = EncodeBatch(*tok_, texts, true, threads);
    ASSERT_TRUE(batch.ok()) << batch.status();
    ASSERT_EQ(batch->size(), texts.size());
    for (size_t i = 0; i < texts.size(); ++i) EXPECT_EQ((*batch)[i], *tok_->Encode(texts[i], true)) << texts[i];
  }
  texts[7] = "bad \xff byte";
  auto bad = EncodeBatch(*tok_, texts, false, 2);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("text 7"), std::string::npos) << bad.status();
  EXPECT_TRUE(EncodeBatch(*tok_, {}, false, 4)->empty());
}

TEST_F(DemoTokenizerTest, SpecialTokens) {
  EXPECT_EQ(tok_->TokenToId("<|bos|>"), 0);
  EXPECT_EQ(tok_->TokenToId("<|eos|>"), 1);
  EXPECT_TRUE(tok_->IsSpecial(1));
  EXPECT_FALSE(tok_->IsSpecial(100));
  EXPECT_EQ(tok_->vocab_size(), 4096);
  auto ids = tok_->Encode("hi<|eos|>", false);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->back(), 1);
  auto text = tok_->Decode(*ids, /*skip_special_tokens=*/true);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "hi");
}

TEST_F(DemoTokenizerTest, BadInput) {
  auto bad = tok_->Encode(std::string("ok \xff\xfe bytes"), false);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("UTF-8"), std::string::npos);
  EXPECT_EQ(tok_->Decode({5000}, false).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tok_->Decode({-1}, false).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(DemoTokenizerTest, LongWhitespaceRunIsFast) {
  std::string s(200000, ' ');
  s += "x";
  auto ids = tok_->Encode(s, false);  // quadratic merging would take minutes
  ASSERT_TRUE(ids.ok());
  auto back = tok_->Decode(*ids, false);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, s);
}

// Streaming: characters spread over several byte-level tokens are emitted
// only when complete, and the pieces add up to the full decode.
TEST_F(DemoTokenizerTest, StreamingDetokenizerEmitsCompleteUtf8) {
  for (const std::string text : {"人生得意须尽欢 😀🎉 done", "plain ascii text", "ü😀x"}) {
    auto ids = tok_->Encode(text, false);
    ASSERT_TRUE(ids.ok());
    StreamingDetokenizer stream(tok_.get(), false);
    std::string joined;
    for (int id : *ids) {
      auto piece = stream.Add(id);
      ASSERT_TRUE(piece.ok());
      EXPECT_EQ(piece->find("\xEF\xBF\xBD"), std::string::npos) << "partial character emitted";
      joined += *piece;
    }
    auto rest = stream.Finish();
    ASSERT_TRUE(rest.ok());
    joined += *rest;
    EXPECT_EQ(joined, text);
  }
  // A stream cut inside a character flushes U+FFFD at the end, as Decode.
  auto ids = tok_->Encode("😀", false);
  ASSERT_TRUE(ids.ok());
  ASSERT_GT(ids->size(), 1u);
  StreamingDetokenizer stream(tok_.get(), false);
  auto first = stream.Add((*ids)[0]);
  ASSERT_TRUE(first.ok());
  EXPECT_TRUE(first->empty());
  auto rest = stream.Finish();
  ASSERT_TRUE(rest.ok());
  auto full = tok_->Decode({(*ids)[0]}, false);
  EXPECT_EQ(*rest, *full);
}

// Every tokenizer layout streams to exactly its full decode: byte-fallback
// tokens (<0xNN>), characters spread over byte-level tokens, Metaspace and
// Strip decoders that treat the first token differently.
class StreamingAllTokenizersTest : public ::testing::TestWithParam<std::string> {};

TEST_P(StreamingAllTokenizersTest, ConcatenationEqualsDecode) {
  auto tok = LoadTokenizer(GetParam());
  ASSERT_TRUE(tok.ok()) << tok.status();
  for (const std::string text : {"Hello world! 人生得意须尽欢", "😀🎉 한국어 텍스트 👍🏽", "  leading and   inner spaces ",
                                 "\n\ncode: int main() { return 0; }", "ünïcödé ǅ ﬁ ① İ", "x"}) {
    auto ids = (*tok)->Encode(text, true);
    ASSERT_TRUE(ids.ok()) << ids.status();
    for (bool skip : {false, true}) {
      auto full = (*tok)->Decode(*ids, skip);
      ASSERT_TRUE(full.ok());
      StreamingDetokenizer stream(tok->get(), skip);
      std::string joined;
      for (int id : *ids) {
        auto piece = stream.Add(id);
        ASSERT_TRUE(piece.ok());
        joined += *piece;
      }
      joined += *stream.Finish();
      EXPECT_EQ(joined, *full) << GetParam() << ": " << text;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, StreamingAllTokenizersTest,
    ::testing::Values("tests/fixtures/tokenizers/gpt2.json", "tests/fixtures/tokenizers/llama3.json",
                      "tests/fixtures/tokenizers/qwen2.json", "tests/fixtures/tokenizers/llama2.json",
                      "tests/fixtures/tokenizers/mistral.json", "tests/fixtures/tokenizers/misc.json",
                      "tests/fixtures/tokenizers/spm_bpe.model", "models/fortune-moe/tokenizer.json"));

TEST(TokenizerLoadTest, ErrorsNameTheFileAndComponent) {
  auto missing = LoadTokenizer("/nonexistent/tokenizer.json");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  auto not_json = ParseHfTokenizer("{", "t.json");
  EXPECT_EQ(not_json.status().code(), absl::StatusCode::kInvalidArgument);
  auto wordpiece = ParseHfTokenizer(R"({"model": {"type": "WordPiece", "vocab": {}}})", "t.json");
  EXPECT_EQ(wordpiece.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(wordpiece.status().message().find("WordPiece"), std::string::npos);
  EXPECT_NE(wordpiece.status().message().find("t.json"), std::string::npos);
  auto pre = ParseHfTokenizer(
      R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
          "pre_tokenizer": {"type": "FancyNew"}})",
      "t.json");
  EXPECT_EQ(pre.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(pre.status().message().find("FancyNew"), std::string::npos);
  auto bad_merge = ParseHfTokenizer(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})", "t.json");
  EXPECT_EQ(bad_merge.status().code(), absl::StatusCode::kInvalidArgument);
  auto bad_type = ParseHfTokenizer(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "byte_fallback": "yes"}})", "t.json");
  EXPECT_EQ(bad_type.status().code(), absl::StatusCode::kInvalidArgument);
}

// A tiny hand-made BPE: merges apply lowest rank first, and unknown
// characters fall back to <0xNN> byte tokens.
TEST(TokenizerLoadTest, BpeMergesAndByteFallback) {
  auto tok = ParseHfTokenizer(R"({
    "model": {"type": "BPE", "byte_fallback": true,
              "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5, "<0xC3>": 6, "<0xA9>": 7},
              "merges": ["b c", "a b", "a bc"]}})",
                              "t.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = (*tok)->Encode("abc", false);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int>{5}));  // b c first, then a bc
  ids = (*tok)->Encode("abab", false);
  EXPECT_EQ(*ids, (std::vector<int>{3, 3}));
  ids = (*tok)->Encode("\xC3\xA9", false);  // é, not in the vocabulary
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, (std::vector<int>{6, 7}));
  auto no_unk = (*tok)->Encode("z", false);
  EXPECT_EQ(no_unk.status().code(), absl::StatusCode::kInvalidArgument);
}

// SentencePiece .model files go through libsentencepiece; the reference ids
// and texts come from its spm_encode and spm_decode tools.
TEST(SentencePieceTest, MatchesSpmEncodeAndRoundTrips) {
  auto tok = LoadTokenizer("tests/fixtures/tokenizers/spm_bpe.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto text = ReadFile("tests/fixtures/tokenizers/spm_bpe.jsonl");
  ASSERT_TRUE(text.ok());
  int n = 0;
  size_t start = 0;
  while (start < text->size()) {
    size_t end = text->find('\n', start);
    Json j = Json::parse(text->substr(start, end - start));
    start = end + 1;
    auto ids = (*tok)->Encode(j["text"].get<std::string>(), false);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, j["ids"].get<std::vector<int>>()) << j["text"];
    auto back = (*tok)->Decode(*ids, false);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, j["decoded"].get<std::string>());  // as spm_decode
    ++n;
  }
  EXPECT_GT(n, 100);
  auto with_bos = (*tok)->Encode("hi", true);
  ASSERT_TRUE(with_bos.ok());
  EXPECT_EQ(with_bos->front(), 1);  // <s>
  EXPECT_TRUE((*tok)->IsSpecial(1));
  auto skipped = (*tok)->Decode(*with_bos, true);
  EXPECT_EQ(*skipped, "hi");
  EXPECT_EQ((*tok)->Encode(std::string("\xff"), false).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*tok)->Decode({999999}, false).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadTokenizer("/nonexistent/x.model").status().code(), absl::StatusCode::kNotFound);
  auto junk = LoadTokenizer("tests/fixtures/tokenizers/gpt2.json");  // not a .model: parsed as JSON
  EXPECT_TRUE(junk.ok());
}

}  // namespace
}  // namespace moemesh

namespace moemesh {
namespace {

// Normal forms as Hugging Face tokenizers computes them: current Unicode,
// except for characters its tables predate, which stay as they are and
// which nothing is reordered across (to it they are starters). U+1AC3 is a
// combining mark of class 220 since Unicode 14; U+06D9 is of class 230.
TEST(UnicodeNormalizeTest, MatchesHuggingFaceTables) {
  auto nfc = [](const std::string& s) { return Normalize(s, NormalForm::kNfc).value(); };
  EXPECT_EQ(nfc("e\u0301"), "\u00e9");                        // composed
  EXPECT_EQ(nfc("a\u0345\u0316"), "a\u0316\u0345");            // reordered by class
  EXPECT_EQ(nfc("7\u06d9\u1ac3"), "7\u06d9\u1ac3");            // U+1AC3 unknown to it: not moved
  EXPECT_EQ(nfc("\u1ac3e\u0301\u1ac3"), "\u1ac3\u00e9\u1ac3");  // the runs around it still normalised
}

}  // namespace
}  // namespace moemesh
