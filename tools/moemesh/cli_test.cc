#include "tools/moemesh/cli.h"

#include <algorithm>
#include <filesystem>
#include <regex>
#include <sstream>

#include "absl/flags/reflection.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "core/common/file_util.h"
#include "core/common/version.h"
#include "core/model/safetensors.h"
#include "core/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"
#include "gtest/gtest.h"
#include "services/kvcache/local_kvcache.h"

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

// `moemesh kv` against a real kvcache service on loopback.
TEST(CliTest, KvCommandsTalkToAKvcacheService) {
  LocalKvCache kv(::testing::TempDir() + "/cli_kv");
  for (const char* id : {"alpha", "beta", "gamma"}) {
    SessionRecord r;
    r.id = id;
    r.tokens = {1, 2, 3};
    ASSERT_TRUE(kv.store()->PutSession(r).ok());
  }
  const std::string target = "--target=" + kv.address();
  std::string out, err;
  ASSERT_EQ(RunCli({"kv", "stats", target}, &out, &err), 0) << err;
  nlohmann::json stats = nlohmann::json::parse(out);
  EXPECT_EQ(stats["sessions"], 3);
  EXPECT_EQ(stats["blocks"], 0);

  ASSERT_EQ(RunCli({"kv", "sessions", target, "--limit=2"}, &out, &err), 0) << err;
  std::vector<std::string> lines = absl::StrSplit(out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 2u) << out;
  EXPECT_EQ(nlohmann::json::parse(lines[0])["session_id"], "alpha");
  EXPECT_EQ(nlohmann::json::parse(lines[1])["tokens"], 3);
  ASSERT_EQ(RunCli({"kv", "sessions", target, "--start-after=beta"}, &out, &err), 0) << err;
  EXPECT_EQ(nlohmann::json::parse(out)["session_id"], "gamma");

  ASSERT_EQ(RunCli({"kv", "delete-session", target, "--session-id=beta"}, &out, &err), 0) << err;
  EXPECT_EQ(nlohmann::json::parse(out)["deleted"], "beta");
  EXPECT_EQ(kv.store()->stats().sessions, 2);
  // Errors: the service's status, or a missing flag, and a non-zero exit.
  EXPECT_NE(RunCli({"kv", "delete-session", target, "--session-id=beta"}, &out, &err), 0);
  EXPECT_TRUE(absl::StrContains(err, "no session 'beta'")) << err;
  EXPECT_EQ(RunCli({"kv", "delete-session", target}, &out, &err), 2);
  EXPECT_TRUE(absl::StrContains(err, "--session-id")) << err;
  EXPECT_EQ(RunCli({"kv", "sessions", target, "--limit=5000"}, &out, &err), 2);
  EXPECT_EQ(RunCli({"kv", "stats"}, &out, &err), 2);
  EXPECT_TRUE(absl::StrContains(err, "--target")) << err;
  ASSERT_EQ(RunCli({"kv", "sessions", "--help"}, &out, &err), 0);
  EXPECT_TRUE(absl::StrContains(out, "--start-after")) << out;
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
                   "--max-new-tokens", "5", "--temperature", "0", "--output", "json"},
                  &out, &err);
  ASSERT_EQ(rc, 0) << err;
  EXPECT_EQ(out.rfind("{\"token_ids\":[", 0), 0u) << out;
  nlohmann::json j = nlohmann::json::parse(out);
  // Same as the library's greedy continuation.
  auto engine = Engine::Create("tests/fixtures/olmoe", {});
  ASSERT_TRUE(engine.ok());
  GenerateParams p;
  p.sampling.temperature = 0;  // greedy
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
           {"generate", "--model", "tests/fixtures/olmoe", "--prompt-ids", "1", "--device", "tpu"},
           {"generate", "--model", "tests/fixtures/olmoe", "--prompt-ids", "1", "--quantize", "int4:48"},
           {"generate", "--model", "tests/fixtures/olmoe", "--prompt-ids", "1", "--quantize", "int8",
            "--device", "cuda"},
           {"up", "--quantize", "fp4"},
           {"up", "--expert-rows", "fp4"},
           {"generate", "--model", "tests/fixtures/olmoe", "--prompt-ids", "1", "--bf16-inputs", "--device", "cuda"},
           {"up", "--bf16-inputs", "--router-device", "cuda", "--expert-device", "cuda"},
           {"up", "--expert-shards", "0", "--expert-rows", "fp8"},
           {"generate", "--model", "tests/fixtures/olmoe", "--prompt-ids", "1", "--expert-rows", "fp8"},
           {"eval", "--model", "tests/fixtures/olmoe", "--dataset", "x.jsonl", "--experts", "127.0.0.1:1",
            "--expert-rows", "fp4"},
           // A 16- or 8-bit KV cache is the GPU's; unknown types are named.
           {"generate", "--model", "tests/fixtures/olmoe", "--prompt-ids", "1", "--kv-cache-dtype", "bfloat16"},
           {"generate", "--model", "tests/fixtures/olmoe", "--prompt-ids", "1", "--kv-cache-dtype", "fp16"},
           {"up", "--kv-cache-dtype", "fp8"},
           {"generate", "--model", "tests/fixtures/olmoe", "--prompt-ids", "1", "--top-k", "2", "--top-k", "3"},
       }) {
    int rc = RunCli(args, &out, &err);
    EXPECT_NE(rc, 0) << args[0];
    EXPECT_EQ(err.rfind("moemesh: error: ", 0), 0u) << err;
    EXPECT_TRUE(out.empty());
  }
}

// `moemesh eval`: {"text"} lines are the model's tokenizer's ids (special
// tokens added), scored as those ids are; --quantize and --bf16-inputs move
// the perplexity a little; bad lines name their line number.
TEST(CliTest, EvalTakesTextOrIds) {
  const std::string dir = ::testing::TempDir();
  const std::vector<std::string> texts = {"The clothes have no emperor.", "Without followers, evil cannot spread."};
  auto tok = LoadTokenizer("models/fortune-moe");
  ASSERT_TRUE(tok.ok()) << tok.status();
  std::string text_lines, id_lines;
  for (const std::string& t : texts) {
    text_lines += nlohmann::json({{"text", t}}).dump() + "\n";
    auto ids = (*tok)->Encode(t, /*add_special_tokens=*/true);
    ASSERT_TRUE(ids.ok());
    id_lines += nlohmann::json({{"ids", *ids}}).dump() + "\n";
  }
  ASSERT_TRUE(WriteFileAtomically(dir + "/text.jsonl", text_lines).ok());
  ASSERT_TRUE(WriteFileAtomically(dir + "/ids.jsonl", id_lines).ok());
  std::string out, err;
  auto ppl = [&](const std::string& file, const std::string& quantize, bool bf16_inputs = false) {
    std::vector<std::string> args = {"eval",       "--model",  "models/fortune-moe", "--dataset", dir + "/" + file,
                                     "--quantize", quantize};
    if (bf16_inputs) args.push_back("--bf16-inputs");
    EXPECT_EQ(RunCli(args, &out, &err), 0) << err;
    nlohmann::json j = nlohmann::json::parse(out, nullptr, false);
    return j.is_object() ? j["perplexity"].get<double>() : -1.0;
  };
  const double by_text = ppl("text.jsonl", "none"), by_ids = ppl("ids.jsonl", "none");
  EXPECT_GT(by_text, 1);
  EXPECT_EQ(by_text, by_ids);
  const double int8 = ppl("text.jsonl", "int8");
  EXPECT_NE(int8, by_text);
  EXPECT_NEAR(int8 / by_text, 1, 0.01);
  const double bf16_inputs = ppl("text.jsonl", "none", true);
  EXPECT_NE(bf16_inputs, by_text);
  EXPECT_NEAR(bf16_inputs / by_text, 1, 0.01);

  for (const auto& [lines, want] : std::vector<std::pair<std::string, std::string>>{
           {"{\"ids\": [1, 2]}\n{\"text\": 5}\n", "bad.jsonl:2: expected a JSON object"},
           {"{\"text\": \"\"}\n", "bad.jsonl:1: the text is 1 token(s)"},
           {"not json\n", "bad.jsonl:1:"}}) {
    ASSERT_TRUE(WriteFileAtomically(dir + "/bad.jsonl", lines).ok());
    EXPECT_EQ(RunCli({"eval", "--model", "models/fortune-moe", "--dataset", dir + "/bad.jsonl"}, &out, &err), 2);
    EXPECT_NE(err.find(want), std::string::npos) << err;
  }
  ASSERT_TRUE(WriteFileAtomically(dir + "/bad.jsonl", "{\"text\": \"hello there\"}\n").ok());
  EXPECT_NE(RunCli({"eval", "--model", "tests/fixtures/olmoe", "--dataset", dir + "/bad.jsonl"}, &out, &err), 0);
  EXPECT_NE(err.find("bad.jsonl:1: a \"text\" line needs the model's tokenizer"), std::string::npos) << err;
}

// `moemesh quantize` writes GPTQ and AWQ checkpoints that load and score as
// the original quantized in memory alike does (F16 scales aside); what it
// cannot do, it says.
TEST(CliTest, QuantizeWritesCheckpointsThatLoadBack) {
  const std::string dir = ::testing::TempDir() + "/quantize";
  std::filesystem::remove_all(dir);
  std::string out, err;
  ASSERT_TRUE(WriteFileAtomically(::testing::TempDir() + "/q_ids.jsonl",
                                  "{\"ids\": [5, 17, 300, 42, 7, 99, 3, 250]}\n{\"ids\": [1, 2, 3, 4, 5]}\n")
                  .ok());
  auto nll = [&](const std::string& model, const std::string& quantize) {
    EXPECT_EQ(RunCli({"eval", "--model", model, "--dataset", ::testing::TempDir() + "/q_ids.jsonl", "--quantize",
                      quantize},
                     &out, &err),
              0)
        << err;
    nlohmann::json j = nlohmann::json::parse(out, nullptr, false);
    return j.is_object() ? j["nll_sum"].get<double>() : -1.0;
  };
  const double stored = nll("tests/fixtures/olmoe", "none");
  for (const auto& [format, spec] : std::vector<std::pair<std::string, std::string>>{{"gptq", "int4:32"},
                                                                                    {"gptq", "int4:32:asym"},
                                                                                    {"awq", "int4:32:asym"}}) {
    const std::string to = dir + "/" + format + "_" + std::to_string(spec.size());
    ASSERT_EQ(RunCli({"quantize", "--model", "tests/fixtures/olmoe", "--out", to, "--quantize", spec, "--format",
                      format},
                     &out, &err),
              0)
        << err;
    EXPECT_NE(out.find("wrote 48 projections"), std::string::npos) << out;  // 2 layers x 8 experts x 3
    auto config = ReadFile(to + "/config.json");
    ASSERT_TRUE(config.ok());
    EXPECT_EQ(nlohmann::json::parse(*config)["quantization_config"]["quant_method"], format);
    const double in_memory = nll("tests/fixtures/olmoe", spec), written = nll(to, "none");
    EXPECT_NE(written, stored) << format << " " << spec;
    EXPECT_NEAR(written / in_memory, 1.0, 1e-3) << format << " " << spec;
  }
  // FP8 blocks of 128 x 128 (partial here: the fixture's projections are
  // smaller), as DeepSeek-V3's: within 1% of the stored weights' likelihood.
  {
    const std::string to = dir + "/fp8";
    ASSERT_EQ(RunCli({"quantize", "--model", "tests/fixtures/olmoe", "--out", to, "--format", "fp8"}, &out, &err), 0)
        << err;
    EXPECT_NE(out.find("wrote 48 projections in FP8 blocks of 128 x 128"), std::string::npos) << out;
    auto config = ReadFile(to + "/config.json");
    ASSERT_TRUE(config.ok());
    const nlohmann::json q = nlohmann::json::parse(*config)["quantization_config"];
    EXPECT_EQ(q["quant_method"], "fp8");
    EXPECT_EQ(q["weight_block_size"], nlohmann::json({128, 128}));
    const double written = nll(to, "none");
    EXPECT_NE(written, stored);
    EXPECT_NEAR(written / stored, 1.0, 1e-2);
  }
  for (const auto& [args, want] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--quantize", "int8"}, "a checkpoint is written in int4"},
           {{"--quantize", "int4:64:q8"}, "chosen when a model is served"},
           {{"--format", "exl2"}, "--format must be gptq, awq or fp8"},
           {{"--format", "fp8", "--quantize", "int4"}, "FP8 blocks take no --quantize"},
           {{}, "exists and is not empty"}}) {
    std::vector<std::string> argv = {"quantize", "--model", "tests/fixtures/olmoe", "--out",
                                     args.empty() ? dir + "/gptq_7" : dir + "/new"};
    argv.insert(argv.end(), args.begin(), args.end());
    EXPECT_NE(RunCli(argv, &out, &err), 0);
    EXPECT_NE(err.find(want), std::string::npos) << err;
  }
  EXPECT_NE(RunCli({"quantize", "--model", dir + "/gptq_7", "--out", dir + "/again"}, &out, &err), 0);
  EXPECT_NE(err.find("is quantized already"), std::string::npos) << err;
}

// --device cuda runs the dense part and the experts on a GPU; where there is
// none it says so (and the test stops there: GPU runs are in the GPU tests).
TEST(CliTest, DeviceFlag) {
  std::string out, err;
  int rc = RunCli({"generate", "--model", "tests/fixtures/olmoe", "--prompt-ids", "1,2,3", "--max-new-tokens", "3",
                   "--temperature", "0", "--device", "cuda:7"},
                  &out, &err);
  EXPECT_NE(rc, 0);
  EXPECT_NE(err.find("cuda:7"), std::string::npos) << err;
  rc = RunCli({"generate", "--model", "tests/fixtures/olmoe", "--prompt-ids", "1", "--device", "gpu"}, &out, &err);
  EXPECT_EQ(rc, 2);
  EXPECT_NE(err.find("expected cpu, cuda or cuda:N"), std::string::npos) << err;
}

// Every flag that cli_main.cc defines: the CLI's own.
std::vector<std::string> CliFlagNames() {
  std::vector<std::string> names;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (absl::EndsWith(flag->Filename(), "tools/moemesh/cli_main.cc")) names.emplace_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

// A row of a --help listing: "  --max-new-tokens   ...".
bool ListsFlag(const std::string& help, const std::string& name) {
  return absl::StrContains(help, "\n  " + FlagDisplayName(name) + " ");
}

TEST(CliHelpTest, EveryFlagBelongsToACommandAndExists) {
  const std::vector<std::string> names = CliFlagNames();
  ASSERT_GT(names.size(), 40u);
  for (const std::string& name : names) {
    bool used = false;
    for (const Command& c : CliCommands()) used |= c.Accepts(name);
    EXPECT_TRUE(used) << FlagDisplayName(name) << " is defined but no command takes it";
  }
  for (const Command& c : CliCommands()) {
    for (const FlagGroup& g : c.groups) {
      for (const FlagUse& f : g.flags) {
        EXPECT_TRUE(std::binary_search(names.begin(), names.end(), f.name)) << c.name << ": " << f.name;
      }
    }
  }
}

TEST(CliHelpTest, CommandHelpListsItsOwnFlagsWithDefaults) {
  std::string out, err;
  ASSERT_EQ(RunCli({"generate", "--help"}, &out, &err), 0) << err;
  EXPECT_TRUE(err.empty()) << err;
  EXPECT_EQ(out.rfind("usage: moemesh generate --model DIR (--prompt TEXT | --prompt-ids 1,2,3) [flags]\n", 0), 0u)
      << out;
  for (const char* row : {"\n  --max-new-tokens ", "\n  --temperature ", "\n  --experts ", "\n  --device ",
                          "\n  --kv-cache-tokens ", "\n  --output "}) {
    EXPECT_TRUE(absl::StrContains(out, row)) << row << "\n" << out;
  }
  EXPECT_TRUE(absl::StrContains(out, "most tokens to generate (default: 16)")) << out;
  EXPECT_TRUE(absl::StrContains(out, "(default: cpu)")) << out;
  EXPECT_TRUE(absl::StrContains(out, "(default: 65536)")) << out;
  EXPECT_TRUE(absl::StrContains(out, "\nsampling:\n")) << out;
  for (const char* other : {"--expert-shards", "--target", "--logits-out", "--dataset", "--session-id", "--port"}) {
    EXPECT_FALSE(absl::StrContains(out, other)) << other << "\n" << out;
  }
  // `moemesh help generate` says the same; so does -h.
  std::string help_out;
  ASSERT_EQ(RunCli({"help", "generate"}, &help_out, &err), 0) << err;
  EXPECT_EQ(help_out, out);
  ASSERT_EQ(RunCli({"generate", "-h"}, &help_out, &err), 0) << err;
  EXPECT_EQ(help_out, out);
  // Help wins over flags and needs none of the required ones.
  ASSERT_EQ(RunCli({"generate", "--expert-shards=3", "--help"}, &help_out, &err), 0) << err;
  EXPECT_EQ(help_out, out);
}

TEST(CliHelpTest, EachCommandsHelpListsExactlyItsFlags) {
  const std::vector<std::string> names = CliFlagNames();
  for (const Command& c : CliCommands()) {
    if (c.name == "help") continue;  // `moemesh help --help` is the command list
    std::vector<std::string> args = absl::StrSplit(c.name, ' ');
    args.push_back("--help");
    std::string out, err;
    ASSERT_EQ(RunCli(args, &out, &err), 0) << c.name << ": " << err;
    EXPECT_EQ(out.rfind("usage: moemesh " + c.name, 0), 0u) << out;
    EXPECT_FALSE(absl::StrContains(out, "(not defined)")) << out;
    for (const std::string& name : names) {
      EXPECT_EQ(ListsFlag(out, name), c.Accepts(name)) << c.name << " " << FlagDisplayName(name) << "\n" << out;
    }
  }
  std::string out, err;
  ASSERT_EQ(RunCli({"up", "--help"}, &out, &err), 0);
  EXPECT_TRUE(absl::StrContains(out, "replicas of each expert shard (default: 1)")) << out;
  EXPECT_TRUE(absl::StrContains(out, "(default: 2)")) << out;
  EXPECT_TRUE(absl::StrContains(out, "(default: 127.0.0.1)")) << out;
  EXPECT_TRUE(absl::StrContains(out, "the bundled demo model")) << out;  // up's own help for --model
  ASSERT_EQ(RunCli({"help", "client", "generate"}, &out, &err), 0);
  EXPECT_TRUE(ListsFlag(out, "target") && ListsFlag(out, "stop") && ListsFlag(out, "temperature")) << out;
  EXPECT_FALSE(ListsFlag(out, "model")) << out;
}

TEST(CliHelpTest, TopLevelHelpListsTheCommands) {
  for (std::vector<std::string> args : {std::vector<std::string>{"--help"}, {"help"}, {"-h"}}) {
    std::string out, err;
    ASSERT_EQ(RunCli(args, &out, &err), 0) << args[0] << ": " << err;
    EXPECT_TRUE(err.empty()) << err;
    EXPECT_EQ(out.rfind("usage: moemesh COMMAND [flags]\n", 0), 0u) << out;
    for (const Command& c : CliCommands()) EXPECT_TRUE(absl::StrContains(out, "\n  " + c.name + " ")) << c.name;
    EXPECT_TRUE(absl::StrContains(out, "moemesh help COMMAND")) << out;
    EXPECT_FALSE(absl::StrContains(out, "No flags matched")) << out;
  }
  // No command at all: the same list on stderr, exit 2.
  std::string out, err;
  EXPECT_EQ(RunCli({}, &out, &err), 2);
  EXPECT_TRUE(out.empty()) << out;
  EXPECT_EQ(err.rfind("usage: moemesh COMMAND [flags]\n", 0), 0u) << err;
}

TEST(CliHelpTest, ClientAloneListsItsSubcommands) {
  std::string out, err;
  EXPECT_EQ(RunCli({"client"}, &out, &err), 2);
  EXPECT_TRUE(out.empty()) << out;
  EXPECT_EQ(err.rfind("moemesh: error: `moemesh client` needs a subcommand\n", 0), 0u) << err;
  for (const char* sub :
       {"client generate", "client tokenize", "client detokenize", "client models", "client health"}) {
    EXPECT_TRUE(absl::StrContains(err, sub)) << err;
  }
  EXPECT_FALSE(absl::StrContains(err, "\n  up ")) << err;
  EXPECT_FALSE(absl::StrContains(err, "--model DIR is required")) << err;
  for (std::vector<std::string> args : {std::vector<std::string>{"client", "--help"}, {"help", "client"}}) {
    ASSERT_EQ(RunCli(args, &out, &err), 0) << err;
    EXPECT_EQ(out.rfind("usage: moemesh client SUBCOMMAND [flags]\n", 0), 0u) << out;
    EXPECT_TRUE(absl::StrContains(out, "client models")) << out;
  }
}

TEST(CliHelpTest, AFlagOfAnotherCommandIsRefused) {
  std::string out, err;
  EXPECT_EQ(RunCli({"generate", "--model", "tests/fixtures/olmoe", "--prompt-ids", "1", "--expert-shards", "3"}, &out,
                   &err),
            2);
  EXPECT_TRUE(out.empty()) << out;
  EXPECT_EQ(err.rfind("moemesh: error: --expert-shards is not a flag of `moemesh generate` (it is one of `moemesh "
                      "up`); `moemesh help generate` lists its flags\n",
                      0),
            0u)
      << err;
  // Not run: `up` would start a mesh, the client would dial out.
  EXPECT_EQ(RunCli({"up", "--prompt=x"}, &out, &err), 2);
  EXPECT_TRUE(absl::StrContains(err, "--prompt is not a flag of `moemesh up`")) << err;
  EXPECT_EQ(RunCli({"client", "models", "--target=127.0.0.1:1", "--model", "x"}, &out, &err), 2);
  EXPECT_TRUE(absl::StrContains(err, "--model is not a flag of `moemesh client models`")) << err;
  EXPECT_EQ(RunCli({"tokenize", "--tokenizer=models/fortune-moe", "--skip-special-tokens"}, &out, &err), 2);
  EXPECT_TRUE(absl::StrContains(err, "--skip-special-tokens is not a flag of `moemesh tokenize`")) << err;
  // A flag no command has, a bad value, a missing value, a stray argument.
  EXPECT_EQ(RunCli({"generate", "--frobnicate"}, &out, &err), 2);
  EXPECT_EQ(err.rfind("moemesh: error: unknown flag --frobnicate for `moemesh generate`", 0), 0u) << err;
  EXPECT_EQ(RunCli({"generate", "--model=tests/fixtures/olmoe", "--max-new-tokens", "many"}, &out, &err), 2);
  EXPECT_TRUE(absl::StrContains(err, "--max-new-tokens: bad value \"many\" (expected an integer)")) << err;
  EXPECT_EQ(RunCli({"generate", "--model"}, &out, &err), 2);
  EXPECT_TRUE(absl::StrContains(err, "--model needs a value")) << err;
  EXPECT_EQ(RunCli({"generate", "extra", "--model=tests/fixtures/olmoe"}, &out, &err), 2);
  EXPECT_TRUE(absl::StrContains(err, "unexpected argument \"extra\"")) << err;
}

TEST(CliHelpTest, UnknownCommandsAreNamed) {
  std::string out, err;
  EXPECT_EQ(RunCli({"frobnicate"}, &out, &err), 2);
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(err.rfind("moemesh: error: unknown command \"frobnicate\"\n", 0), 0u) << err;
  EXPECT_TRUE(absl::StrContains(err, "\n  generate ")) << err;  // and the list
  EXPECT_EQ(RunCli({"help", "frobnicate"}, &out, &err), 2);
  EXPECT_EQ(err.rfind("moemesh: error: unknown command \"frobnicate\"\n", 0), 0u) << err;
  EXPECT_EQ(RunCli({"client", "frobnicate"}, &out, &err), 2);
  EXPECT_EQ(err.rfind("moemesh: error: unknown client command \"frobnicate\"\n", 0), 0u) << err;
  EXPECT_TRUE(absl::StrContains(err, "client models")) << err;
}

TEST(CliHelpTest, VersionNamesReleaseCommitAndBuild) {
  const std::regex format(
      R"(moemesh \d+\.\d+\.\d+ \(commit ([0-9a-f]{12}|unknown), (not )?optimised, assertions (on|off)\)\n)");
  for (std::vector<std::string> args :
       {std::vector<std::string>{"--version"}, {"version"}, {"generate", "--version"}}) {
    std::string out, err;
    ASSERT_EQ(RunCli(args, &out, &err), 0) << args[0] << ": " << err;
    EXPECT_TRUE(std::regex_match(out, format)) << out;
    EXPECT_EQ(out, VersionString() + "\n");
    EXPECT_FALSE(absl::StrContains(out, "Debug build")) << out;
  }
}

TEST(CliTest, LoadingTheModelIsReportedOnStderr) {
  std::string out, err;
  ASSERT_EQ(RunCli({"generate", "--model", "tests/fixtures/olmoe", "--prompt-ids", "1,2", "--max-new-tokens", "2"},
                   &out, &err),
            0)
      << err;
  // Captured stderr is no terminal: plain lines.
  EXPECT_TRUE(std::regex_match(err, std::regex("loading model tests/fixtures/olmoe \\([0-9.]+ kB of weights\\)\\.\\.\\.\n"
                                               "loaded in [0-9]+\\.[0-9]s\n")))
      << err;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;  // stdout has the tokens only
}

// `moemesh random-model` refuses what it cannot write, by name, and writes
// nothing (core/model/random_checkpoint_test checks what it writes: a real
// preset's layers are gigabytes).
TEST(CliTest, RandomModelRefusesBadRequests) {
  const std::string dir = ::testing::TempDir() + "/random_cli";
  struct Bad {
    std::vector<std::string> args;
    const char* says;
  };
  const Bad bad[] = {
      {{"random-model", "--preset", "llama-70b", "--out", dir}, "--preset must be"},
      {{"random-model", "--preset", "mixtral-8x7b"}, "--out DIR is required"},
      {{"random-model", "--preset", "qwen3-30b-a3b", "--out", dir, "--layers", "0"}, "--layers must be"},
      {{"random-model", "--preset", "deepseek-v3", "--out", dir, "--layers", "1"}, "is dense"},
      {{"random-model", "--preset", "mixtral-8x7b", "--out", dir, "--tokenizer", dir + "/nowhere"}, "nowhere"},
  };
  for (const Bad& b : bad) {
    std::string out, err;
    EXPECT_NE(RunCli(b.args, &out, &err), 0) << b.args[2];
    EXPECT_NE(err.find(b.says), std::string::npos) << err;
  }
  EXPECT_FALSE(std::filesystem::exists(dir + "/model.safetensors"));
}

}  // namespace
}  // namespace moemesh
