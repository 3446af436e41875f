#include "tools/moemesh/cli.h"

#include <sstream>

#include "absl/flags/reflection.h"
#include "core/common/file_util.h"
#include "core/model/safetensors.h"
#include "core/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

int RunCli(std::vector<std::string> args, std::string* out, std::string* err) {
  absl::FlagSaver saver;  // flags are process-global
  args.insert(args.begin(), "moemesh");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  int rc = CliMain(static_cast<int>(argv.size()), argv.data());
  *out = ::testing::internal::GetCapturedStdout();
  *err = ::testing::internal::GetCapturedStderr();
  return rc;
}

TEST(CliTest, ParseTokenIds) {
  auto ids = ParseTokenIds(" 1, 2,3 ");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int>{1, 2, 3}));
  EXPECT_TRUE(ParseTokenIds("")->empty());
  EXPECT_NE(ParseTokenIds("1,x").status().message().find("\"x\""), std::string::npos);
  EXPECT_FALSE(ParseTokenIds("1,-2").ok());
  EXPECT_FALSE(ParseTokenIds("1,,2").ok());
}

TEST(CliTest, GenerateJsonPrintsNewTokensOnly) {
  std::string out, err;
  int rc = RunCli({"generate", "--model", "tests/fixtures/olmoe", "--prompt-ids", "1,2,3",
                   "--max-new-tokens", "5", "--output", "json"},
                  &out, &err);
  ASSERT_EQ(rc, 0) << err;
  EXPECT_EQ(out.rfind("{\"token_ids\":[", 0), 0u) << out;
  nlohmann::json j = nlohmann::json::parse(out);
  // Same as the library's greedy continuation.
  auto engine = Engine::Create("tests/fixtures/olmoe", {});
  ASSERT_TRUE(engine.ok());
  GenerateParams p;
  p.max_new_tokens = 5;
  auto r = (*engine)->Generate({1, 2, 3}, p);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(j["token_ids"].get<std::vector<int>>(), r->tokens);
  EXPECT_EQ(j["finish_reason"], "length");
  EXPECT_FALSE(j.contains("text"));  // the fixture has no tokenizer
}

TEST(CliTest, GenerateFromTextStreamsTheSameTextAsJson) {
  std::vector<std::string> args = {"generate", "--model", "models/fortune-moe", "--prompt", "Life is",
                                   "--max-new-tokens", "24", "--temperature", "0.8", "--seed", "5"};
  std::string text_out, json_out, err;
  ASSERT_EQ(RunCli(args, &text_out, &err), 0) << err;
  args.insert(args.end(), {"--output", "json"});
  ASSERT_EQ(RunCli(args, &json_out, &err), 0) << err;
  nlohmann::json j = nlohmann::json::parse(json_out);
  EXPECT_EQ(text_out, j["text"].get<std::string>() + "\n");
  EXPECT_FALSE(j["token_ids"].empty());
  // The text is the tokenizer's decoding of the ids.
  auto tok = LoadTokenizer("models/fortune-moe");
  ASSERT_TRUE(tok.ok());
  auto decoded = (*tok)->Decode(j["token_ids"].get<std::vector<int>>(), true);
  EXPECT_EQ(*decoded, j["text"]);
}

TEST(CliTest, TokenizeAndDetokenizeRoundTrip) {
  TokenizeCommand cmd{"models/fortune-moe/tokenizer.json", true, true};
  std::istringstream in("{\"text\": \"Hello 人生\"}\n\n{\"text\": \"x\"}\n");
  std::ostringstream out;
  ASSERT_TRUE(RunTokenize(cmd, in, out).ok());
  EXPECT_EQ(out.str(), "{\"ids\":[0,42,630,81,223,422,821]}\n{\"ids\":[0,90]}\n");
  std::istringstream ids("{\"ids\":[0,42,630,81,223,422,821]}\n");
  std::ostringstream text;
  ASSERT_TRUE(RunDetokenize(cmd, ids, text).ok());
  EXPECT_EQ(text.str(), "{\"text\":\"Hello 人生\"}\n");
  std::istringstream bad("{\"text\": 5}\n");
  auto st = RunTokenize(cmd, bad, out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("line 1"), std::string::npos);
}

TEST(CliTest, ScoreWritesLogitsSafetensors) {
  std::string path = JoinPath(::testing::TempDir(), "logits.safetensors");
  std::string out, err;
  int rc = RunCli({"score", "--model=tests/fixtures/mixtral", "--prompt-ids=4,5,6,7",
                "--logits-out=" + path},
               &out, &err);
  ASSERT_EQ(rc, 0) << err;
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  const TensorInfo* t = (*f)->Find("logits");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, DType::kF32);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{4, 512}));
  auto engine = Engine::Create("tests/fixtures/mixtral", {});
  auto logits = (*engine)->Score({4, 5, 6, 7});
  ASSERT_TRUE(logits.ok());
  EXPECT_EQ(std::memcmp(t->data, logits->data(), t->nbytes), 0);
}

TEST(CliTest, BadInputExitsNonZeroWithOneLine) {
  std::string out, err;
  for (auto args : std::vector<std::vector<std::string>>{
           {"generate", "--model", "tests/fixtures/olmoe", "--prompt-ids", "1,zz"},
           {"generate", "--model", "tests/fixtures/olmoe", "--prompt-ids", "1,9999"},
           {"generate", "--model", "tests/fixtures/olmoe", "--prompt-ids", ""},
           {"generate", "--model", "/nonexistent", "--prompt-ids", "1"},
           {"generate", "--prompt-ids", "1"},
           {"generate", "--model", "tests/fixtures/olmoe", "--prompt", "needs a tokenizer"},
           {"generate", "--model", "models/fortune-moe", "--prompt", "x", "--prompt-ids", "1"},
           {"tokenize"},
           {"generate", "--model", "tests/fixtures/olmoe", "--prompt-ids", "1", "--top-p", "0"},
           {"score", "--model", "tests/fixtures/olmoe", "--prompt-ids", "1"},
           {"frobnicate", "--model", "tests/fixtures/olmoe"},
       }) {
    int rc = RunCli(args, &out, &err);
    EXPECT_NE(rc, 0) << args[0];
    EXPECT_EQ(err.rfind("moemesh: error: ", 0), 0u) << err;
    EXPECT_TRUE(out.empty());
  }
}

}  // namespace
}  // namespace moemesh
