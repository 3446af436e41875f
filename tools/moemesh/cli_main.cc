// Flag parsing for the moemesh CLI: flags -> command structs -> cli.cc.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "services/common/server_util.h"
#include "tools/moemesh/cli.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory (config.json + safetensors)");
ABSL_FLAG(std::string, prompt_ids, "", "prompt token ids, comma separated");
ABSL_FLAG(std::string, prompt, "", "prompt text (tokenized with the model's tokenizer.json, BOS added)");
ABSL_FLAG(std::string, tokenizer, "", "tokenizer.json file or directory (default: the model's)");
ABSL_FLAG(bool, add_special_tokens, false, "tokenize: add the template's special tokens (BOS)");
ABSL_FLAG(bool, skip_special_tokens, false, "detokenize: leave special tokens out of the text");
ABSL_FLAG(int, max_new_tokens, 16, "tokens to generate");
ABSL_FLAG(float, temperature, 0.0f, "sampling temperature; 0 is greedy");
ABSL_FLAG(int, top_k, 0, "keep the k most likely tokens; 0 disables");
ABSL_FLAG(float, top_p, 1.0f, "nucleus sampling mass; 1 disables");
ABSL_FLAG(float, min_p, 0.0f, "drop tokens below min_p * p(top token); 0 disables");
ABSL_FLAG(float, repetition_penalty, 1.0f, "penalty on prompt and output tokens; 1 disables");
ABSL_FLAG(float, presence_penalty, 0.0f, "subtracted once from each output token's logit");
ABSL_FLAG(float, frequency_penalty, 0.0f, "subtracted per occurrence of an output token");
ABSL_FLAG(int64_t, seed, -1, "sampling seed; same seed, same tokens; -1 picks one");
ABSL_FLAG(std::string, stop_token_ids, "", "extra stop token ids, comma separated");
ABSL_FLAG(bool, ignore_eos, false, "keep generating past the model's EOS tokens");
ABSL_FLAG(std::string, output, "text", "output format: text or json");
ABSL_FLAG(std::string, logits_out, "", "score: safetensors file to write the logits to");
ABSL_FLAG(std::string, dataset, "", "eval: JSON lines of {\"ids\": [...]}");
ABSL_FLAG(int, threads, 1, "CPU threads");
ABSL_FLAG(int, experts_connect_timeout_ms, 10000, "generate: how long to wait for the expert workers");
ABSL_FLAG(std::string, experts, "",
          "generate: expert workers, shards in order separated by ',', replicas of a shard by '|' "
          "(a:1|b:2,c:3); empty runs the experts in this process");
ABSL_FLAG(int, kv_cache_tokens, 65536, "KV cache capacity in tokens");
ABSL_FLAG(int, prefill_chunk, 512, "longest prefill chunk per forward step");
ABSL_FLAG(double, gating_temperature, 0.0, "MoE gating temperature T (off when 0)");
ABSL_FLAG(int, dynamic_k_min, 0, "dynamic expert count: smallest k");
ABSL_FLAG(int, dynamic_k_max, 0, "dynamic expert count: largest k (off when 0)");
ABSL_FLAG(double, dynamic_k_p, 0.0, "dynamic expert count: cumulative probability to reach");

namespace moemesh {

const char kUsage[] =
    "usage: moemesh <command> [flags]\n"
    "commands:\n"
    "  generate   --model DIR (--prompt TEXT | --prompt-ids 1,2,3) [--max-new-tokens N]\n"
    "             [--temperature T --top-p P --seed S ...] [--output json]\n"
    "  score      --model DIR --prompt-ids 1,2,3 --logits-out FILE\n"
    "  eval       --model DIR --dataset FILE.jsonl   (perplexity)\n"
    "  tokenize   --tokenizer FILE [--add-special-tokens] < {\"text\"} lines\n"
    "  detokenize --tokenizer FILE [--skip-special-tokens] < {\"ids\"} lines\n"
    "run `moemesh --help` for every flag";

namespace {

// The exit code of a command: 0, or the one-line error and 2 for bad input,
// 1 otherwise.
int ExitWith(const absl::Status& s) {
  if (s.ok()) return 0;
  std::fprintf(stderr, "moemesh: error: %s\n", std::string(s.message()).c_str());
  return s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

absl::StatusOr<EngineOptions> EngineFlags() {
  EngineOptions e;
  e.num_threads = absl::GetFlag(FLAGS_threads);
  e.kv_cache_tokens = absl::GetFlag(FLAGS_kv_cache_tokens);
  e.prefill_chunk = absl::GetFlag(FLAGS_prefill_chunk);
  e.gating.temperature = absl::GetFlag(FLAGS_gating_temperature);
  e.gating.dynamic_k_min = absl::GetFlag(FLAGS_dynamic_k_min);
  e.gating.dynamic_k_max = absl::GetFlag(FLAGS_dynamic_k_max);
  e.gating.dynamic_k_p = absl::GetFlag(FLAGS_dynamic_k_p);
  if (absl::Status s = e.Validate(); !s.ok()) return s;
  return e;
}

}  // namespace

int CliMain(int argc, char** argv) {
  std::vector<std::string> args = NormalizeFlagNames(argc, argv);
  std::vector<char*> argp;
  for (std::string& a : args) argp.push_back(a.data());
  std::vector<char*> rest = absl::ParseCommandLine(static_cast<int>(argp.size()), argp.data());
  if (rest.size() != 2) {
    std::fprintf(stderr, "moemesh: error: expected exactly one command\n%s\n", kUsage);
    return 2;
  }
  std::string command = rest[1];
  if (command == "tokenize" || command == "detokenize") {
    TokenizeCommand cmd{absl::GetFlag(FLAGS_tokenizer), absl::GetFlag(FLAGS_add_special_tokens),
                        absl::GetFlag(FLAGS_skip_special_tokens)};
    if (cmd.tokenizer_path.empty()) return ExitWith(absl::InvalidArgumentError("--tokenizer FILE is required"));
    return ExitWith(command == "tokenize" ? RunTokenize(cmd, std::cin, std::cout)
                                            : RunDetokenize(cmd, std::cin, std::cout));
  }
  std::string model = absl::GetFlag(FLAGS_model);
  if (model.empty()) return ExitWith(absl::InvalidArgumentError("--model DIR is required"));
  auto ids = ParseTokenIds(absl::GetFlag(FLAGS_prompt_ids));
  if (!ids.ok()) return ExitWith(ids.status());
  auto engine = EngineFlags();
  if (!engine.ok()) return ExitWith(engine.status());
  if (command == "eval") {
    EvalCommand cmd{model, absl::GetFlag(FLAGS_dataset), *engine};
    return ExitWith(RunEval(cmd, std::cout));
  }
  if (command == "generate") {
    GenerateCommand cmd;
    cmd.model_dir = model;
    cmd.prompt_ids = *ids;
    cmd.prompt = absl::GetFlag(FLAGS_prompt);
    cmd.tokenizer_path = absl::GetFlag(FLAGS_tokenizer);
    cmd.experts_connect_timeout_ms = absl::GetFlag(FLAGS_experts_connect_timeout_ms);
    cmd.experts = absl::GetFlag(FLAGS_experts);
    cmd.engine = *engine;
    cmd.params.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
    SamplingParams& s = cmd.params.sampling;
    s.temperature = absl::GetFlag(FLAGS_temperature);
    s.top_k = absl::GetFlag(FLAGS_top_k);
    s.top_p = absl::GetFlag(FLAGS_top_p);
    s.min_p = absl::GetFlag(FLAGS_min_p);
    s.repetition_penalty = absl::GetFlag(FLAGS_repetition_penalty);
    s.presence_penalty = absl::GetFlag(FLAGS_presence_penalty);
    s.frequency_penalty = absl::GetFlag(FLAGS_frequency_penalty);
    if (absl::GetFlag(FLAGS_seed) >= 0) s.seed = static_cast<uint64_t>(absl::GetFlag(FLAGS_seed));
    auto stops = ParseTokenIds(absl::GetFlag(FLAGS_stop_token_ids));
    if (!stops.ok()) return ExitWith(stops.status());
    cmd.params.stop_token_ids = *stops;
    cmd.params.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
    std::string output = absl::GetFlag(FLAGS_output);
    if (output != "json" && output != "text") {
      return ExitWith(absl::InvalidArgumentError("--output must be text or json"));
    }
    cmd.json = output == "json";
    return ExitWith(RunGenerate(cmd, std::cout));
  }
  if (command == "score") {
    ScoreCommand cmd;
    cmd.model_dir = model;
    cmd.prompt_ids = *ids;
    cmd.engine = *engine;
    cmd.logits_out = absl::GetFlag(FLAGS_logits_out);
    return ExitWith(RunScore(cmd, std::cout));
  }
  std::fprintf(stderr, "moemesh: error: unknown command \"%s\"\n%s\n", command.c_str(), kUsage);
  return 2;
}

}  // namespace moemesh
