// Flag parsing for the moemesh CLI: flags -> command structs -> cli.cc.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include <signal.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "services/common/device_flag.h"
#include "services/common/server_util.h"
#include "tools/moemesh/cli.h"
#include "tools/moemesh/client.h"
#include "tools/moemesh/up.h"
#ifdef MOEMESH_WITH_CUDA
#include "core/engine/cuda/cuda_forward_pass.h"
#include "core/experts/cuda/cuda_expert_device.h"
#endif

ABSL_FLAG(std::string, model, "", "checkpoint directory (config.json + safetensors)");
ABSL_FLAG(std::string, prompt_ids, "", "prompt token ids, comma separated");
ABSL_FLAG(std::string, prompt, "", "prompt text (tokenized with the model's tokenizer.json, BOS added)");
ABSL_FLAG(std::string, tokenizer, "", "tokenizer.json file or directory (default: the model's)");
ABSL_FLAG(bool, add_special_tokens, false, "tokenize: add the template's special tokens (BOS)");
ABSL_FLAG(bool, skip_special_tokens, false, "detokenize: leave special tokens out of the text");
ABSL_FLAG(bool, keep_special_tokens, false, "client generate: keep special tokens (EOS) in the text");
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
ABSL_FLAG(std::string, device, "cpu",
          "generate, score, eval: where the model runs: cpu, or cuda[:N] (attention, gating, the LM head and the "
          "experts run here on GPU N, default 0)");
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
ABSL_FLAG(int, expert_shards, 2, "up: expert shards (0 runs the experts inside the routers)");
ABSL_FLAG(std::string, placement, "", "up: placement file (JSON) for the expert workers and routers");
ABSL_FLAG(bool, monitoring, false, "up: also start a local Prometheus (Debian's prometheus) scraping the mesh");
ABSL_FLAG(int, prometheus_port, 0, "up --monitoring: Prometheus's port; 0 picks a free one");
ABSL_FLAG(int, scrape_interval_s, 5, "up --monitoring: scrape and rule evaluation interval in seconds");
ABSL_FLAG(std::string, expert_device, "cpu", "up: where the expert workers compute: cpu, cuda or cuda:N");
ABSL_FLAG(std::string, router_device, "cpu",
          "up: where the routers run attention, gating and the LM head: cpu, cuda or cuda:N");
ABSL_FLAG(int, expert_replicas, 1, "up: replicas of each expert shard");
ABSL_FLAG(int, routers, 1, "up: routers");
ABSL_FLAG(std::string, host, "127.0.0.1", "up: address the services listen on");
ABSL_FLAG(int, port, 0, "up: the gateway's port; 0 picks a free one");
ABSL_FLAG(int, max_running, 64, "up: requests in each router's batch at once");
ABSL_FLAG(std::string, bin_dir, "", "up: directory of moemesh-expert/-router/-gateway (default: found beside moemesh)");
ABSL_FLAG(std::string, target, "", "client: the gateway, HOST:PORT");
ABSL_FLAG(int, timeout_ms, 0, "client: deadline of the call in milliseconds; 0: none");
ABSL_FLAG(std::vector<std::string>, stop, {}, "client generate: stop sequences, comma separated");
ABSL_FLAG(int, logprobs, 0, "client generate: top-n log probabilities per token (0-20)");
ABSL_FLAG(std::string, session_id, "", "client generate: session id (requests of a session share a router)");
ABSL_FLAG(std::string, text, "", "client tokenize: the text");
ABSL_FLAG(std::string, ids, "", "client detokenize: token ids, comma separated");
ABSL_FLAG(std::string, model_name, "", "client: the model's name (default: the only one served)");

namespace moemesh {

const char kUsage[] =
    "usage: moemesh <command> [flags]\n"
    "commands:\n"
    "  generate   --model DIR (--prompt TEXT | --prompt-ids 1,2,3) [--max-new-tokens N]\n"
    "             [--temperature T --top-p P --seed S ...] [--device cuda] [--output json]\n"
    "  score      --model DIR --prompt-ids 1,2,3 --logits-out FILE\n"
    "  eval       --model DIR --dataset FILE.jsonl   (perplexity)\n"
    "  tokenize   --tokenizer FILE [--add-special-tokens] < {\"text\"} lines\n"
    "  detokenize --tokenizer FILE [--skip-special-tokens] < {\"ids\"} lines\n"
    "  up         [--model DIR] [--expert-shards N] [--expert-replicas R] [--routers K] [--port P]\n"
    "             [--placement FILE] [--expert-device D] [--router-device D] [--monitoring]\n"
    "             (the whole mesh as local processes; default model: the bundled demo;\n"
    "             --monitoring adds a Prometheus scraping it)\n"
    "  client generate   --target HOST:PORT (--prompt TEXT | --prompt-ids 1,2,3) [--max-new-tokens N]\n"
    "                    [sampling flags] [--stop S1,S2] [--logprobs N] [--session-id ID] [--output json]\n"
    "  client tokenize   --target HOST:PORT --text TEXT [--add-special-tokens]\n"
    "  client detokenize --target HOST:PORT --ids 1,2,3 [--skip-special-tokens]\n"
    "  client models     --target HOST:PORT\n"
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
  absl::StatusOr<int> gpu = ParseDeviceFlag(absl::GetFlag(FLAGS_device));
  if (!gpu.ok()) return gpu.status();
  if (*gpu >= 0) {
#ifdef MOEMESH_WITH_CUDA
    e.forward_pass = CudaForwardPass::Factory(*gpu);
    e.expert_device = CudaExpertDevice::Factory(*gpu);
#else
    return absl::InvalidArgumentError("--device " + absl::GetFlag(FLAGS_device) +
                                      ": this build has no CUDA (nvcc was not found)");
#endif
  }
  if (absl::Status s = e.Validate(); !s.ok()) return s;
  return e;
}

absl::StatusOr<bool> JsonOutput() {
  std::string output = absl::GetFlag(FLAGS_output);
  if (output != "json" && output != "text") return absl::InvalidArgumentError("--output must be text or json");
  return output == "json";
}

int UpMain() {
  // Taken synchronously by RunUp; the services start with them unblocked.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  UpCommand cmd;
  cmd.model_dir = absl::GetFlag(FLAGS_model);
  cmd.expert_shards = absl::GetFlag(FLAGS_expert_shards);
  cmd.expert_replicas = absl::GetFlag(FLAGS_expert_replicas);
  cmd.expert_device = absl::GetFlag(FLAGS_expert_device);
  cmd.router_device = absl::GetFlag(FLAGS_router_device);
  cmd.placement = absl::GetFlag(FLAGS_placement);
  cmd.monitoring = absl::GetFlag(FLAGS_monitoring);
  cmd.prometheus_port = absl::GetFlag(FLAGS_prometheus_port);
  cmd.scrape_interval_s = absl::GetFlag(FLAGS_scrape_interval_s);
  cmd.routers = absl::GetFlag(FLAGS_routers);
  cmd.host = absl::GetFlag(FLAGS_host);
  cmd.port = absl::GetFlag(FLAGS_port);
  cmd.threads = absl::GetFlag(FLAGS_threads);
  cmd.kv_cache_tokens = absl::GetFlag(FLAGS_kv_cache_tokens);
  cmd.max_running = absl::GetFlag(FLAGS_max_running);
  cmd.bin_dir = absl::GetFlag(FLAGS_bin_dir);
  return ExitWith(RunUp(cmd, std::cout));
}

// Builds the public request from the generate flags.
absl::StatusOr<v1::GenerateRequest> ClientGenerateRequest() {
  v1::GenerateRequest r;
  r.set_model(absl::GetFlag(FLAGS_model_name));
  const std::string prompt = absl::GetFlag(FLAGS_prompt);
  auto ids = ParseTokenIds(absl::GetFlag(FLAGS_prompt_ids));
  if (!ids.ok()) return ids.status();
  if (prompt.empty() == ids->empty()) {
    return absl::InvalidArgumentError("give exactly one of --prompt TEXT and --prompt-ids 1,2,3");
  }
  if (!prompt.empty()) {
    r.set_text(prompt);
  } else {
    r.mutable_token_ids()->mutable_ids()->Add(ids->begin(), ids->end());
  }
  r.set_max_tokens(absl::GetFlag(FLAGS_max_new_tokens));
  v1::SamplingParams* s = r.mutable_sampling();
  s->set_temperature(absl::GetFlag(FLAGS_temperature));
  s->set_top_k(absl::GetFlag(FLAGS_top_k));
  s->set_top_p(absl::GetFlag(FLAGS_top_p));
  s->set_min_p(absl::GetFlag(FLAGS_min_p));
  s->set_repetition_penalty(absl::GetFlag(FLAGS_repetition_penalty));
  s->set_presence_penalty(absl::GetFlag(FLAGS_presence_penalty));
  s->set_frequency_penalty(absl::GetFlag(FLAGS_frequency_penalty));
  if (absl::GetFlag(FLAGS_seed) >= 0) s->set_seed(static_cast<uint64_t>(absl::GetFlag(FLAGS_seed)));
  for (const std::string& stop : absl::GetFlag(FLAGS_stop)) r.add_stop(stop);
  auto stops = ParseTokenIds(absl::GetFlag(FLAGS_stop_token_ids));
  if (!stops.ok()) return stops.status();
  r.mutable_stop_token_ids()->Add(stops->begin(), stops->end());
  r.set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
  r.set_logprobs(absl::GetFlag(FLAGS_logprobs));
  r.set_session_id(absl::GetFlag(FLAGS_session_id));
  r.set_skip_special_tokens(!absl::GetFlag(FLAGS_keep_special_tokens));
  return r;
}

int ClientMain(const std::string& sub) {
  ClientOptions opt{absl::GetFlag(FLAGS_target), absl::GetFlag(FLAGS_timeout_ms)};
  if (opt.target.empty()) return ExitWith(absl::InvalidArgumentError("--target HOST:PORT (the gateway) is required"));
  if (sub == "generate") {
    auto json = JsonOutput();
    if (!json.ok()) return ExitWith(json.status());
    auto req = ClientGenerateRequest();
    if (!req.ok()) return ExitWith(req.status());
    return ExitWith(RunClientGenerate(opt, *req, *json, std::cout));
  }
  if (sub == "tokenize") {
    v1::TokenizeRequest r;
    r.set_model(absl::GetFlag(FLAGS_model_name));
    r.set_text(absl::GetFlag(FLAGS_text));
    r.set_add_special_tokens(absl::GetFlag(FLAGS_add_special_tokens));
    return ExitWith(RunClientTokenize(opt, r, std::cout));
  }
  if (sub == "detokenize") {
    auto ids = ParseTokenIds(absl::GetFlag(FLAGS_ids));
    if (!ids.ok()) return ExitWith(ids.status());
    v1::DetokenizeRequest r;
    r.set_model(absl::GetFlag(FLAGS_model_name));
    r.mutable_ids()->Add(ids->begin(), ids->end());
    r.set_skip_special_tokens(absl::GetFlag(FLAGS_skip_special_tokens));
    return ExitWith(RunClientDetokenize(opt, r, std::cout));
  }
  if (sub == "models") return ExitWith(RunClientModels(opt, std::cout));
  std::fprintf(stderr, "moemesh: error: unknown client command \"%s\"\n%s\n", sub.c_str(), kUsage);
  return 2;
}

}  // namespace

int CliMain(int argc, char** argv) {
  std::vector<std::string> args = NormalizeFlagNames(argc, argv);
  std::vector<char*> argp;
  for (std::string& a : args) argp.push_back(a.data());
  std::vector<char*> rest = absl::ParseCommandLine(static_cast<int>(argp.size()), argp.data());
  if (rest.size() == 3 && std::string(rest[1]) == "client") return ClientMain(rest[2]);
  if (rest.size() != 2) {
    std::fprintf(stderr, "moemesh: error: expected exactly one command\n%s\n", kUsage);
    return 2;
  }
  std::string command = rest[1];
  if (command == "up") return UpMain();
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
    auto json = JsonOutput();
    if (!json.ok()) return ExitWith(json.status());
    cmd.json = *json;
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
