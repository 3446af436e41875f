// The moemesh CLI's commands and flags: argv -> the command's flags -> command structs -> cli.cc.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/common/version.h"
#include "core/kv/kv_dtype.h"
#include "core/quant/quantize.h"
#include "nlohmann/json.hpp"
#include "services/common/device_flag.h"
#include "tools/moemesh/bench_serve.h"
#include "tools/moemesh/cli.h"
#include "services/common/tls.h"
#include "tools/moemesh/client.h"
#include "tools/moemesh/commands.h"
#include "tools/moemesh/progress.h"
#include "tools/moemesh/quantize_command.h"
#include "tools/moemesh/random_model_command.h"
#include "tools/moemesh/kv.h"
#include "tools/moemesh/up.h"
#ifdef MOEMESH_WITH_CUDA
#include "core/engine/cuda/cuda_forward_pass.h"
#include "core/experts/cuda/cuda_expert_device.h"
#endif

// Every flag of every command. Each command takes only the flags that its
// entry in CliCommands() lists; `moemesh COMMAND --help` prints them.
ABSL_FLAG(std::string, model, "", "model directory: config.json, safetensors weights, tokenizer.json");
ABSL_FLAG(std::string, prompt_ids, "", "prompt token ids, comma separated");
ABSL_FLAG(std::string, prompt, "", "prompt text, tokenized with the model's tokenizer.json (BOS added)");
ABSL_FLAG(std::string, tokenizer, "", "tokenizer.json file or directory (default: the model's)");
ABSL_FLAG(bool, add_special_tokens, false, "add the tokenizer's special tokens (BOS)");
ABSL_FLAG(bool, skip_special_tokens, false, "leave special tokens out of the text");
ABSL_FLAG(bool, keep_special_tokens, false, "keep special tokens (EOS) in the text");
ABSL_FLAG(int, max_new_tokens, 16, "most tokens to generate");
// Sampling defaults are the request contract's (core/engine/request.h), as on the wire.
ABSL_FLAG(float, temperature, moemesh::SamplingParams().temperature, "sampling temperature; 0 is greedy");
ABSL_FLAG(int, top_k, moemesh::SamplingParams().top_k, "keep the k most likely tokens; 0 disables");
ABSL_FLAG(float, top_p, moemesh::SamplingParams().top_p, "nucleus sampling mass; 1 disables");
ABSL_FLAG(float, min_p, moemesh::SamplingParams().min_p, "drop tokens below min_p * p(top token); 0 disables");
ABSL_FLAG(float, repetition_penalty, moemesh::SamplingParams().repetition_penalty,
          "penalty on prompt and output tokens; 1 disables");
ABSL_FLAG(float, presence_penalty, moemesh::SamplingParams().presence_penalty,
          "subtracted once from each output token's logit");
ABSL_FLAG(float, frequency_penalty, moemesh::SamplingParams().frequency_penalty,
          "subtracted per occurrence of an output token");
ABSL_FLAG(int64_t, seed, -1, "sampling seed; same seed, same tokens; -1 picks one");
ABSL_FLAG(std::string, stop_token_ids, "", "extra stop token ids, comma separated");
ABSL_FLAG(bool, ignore_eos, false, "keep generating past the model's EOS tokens");
ABSL_FLAG(std::string, output, "text", "output format: text or json");
ABSL_FLAG(std::string, logits_out, "", "safetensors file to write the logits to");
ABSL_FLAG(std::string, dataset, "", "JSON lines of {\"ids\": [...]}, one sequence per line");
ABSL_FLAG(std::string, out, "", "directory to write the checkpoint to (quantize: new, or empty)");
ABSL_FLAG(std::string, preset, "", "random-model: mixtral-8x7b, qwen3-30b-a3b or deepseek-v3");
ABSL_FLAG(int, layers, 8, "random-model: decoder layers (DeepSeek-V3's first is dense)");
ABSL_FLAG(std::string, format, "gptq",
          "checkpoint format to write: gptq or awq (int4), or fp8 (e4m3 in blocks of 128 x 128 with a scale each, "
          "as DeepSeek-V3's checkpoints; no --quantize)");
ABSL_FLAG(bool, all_layers, false, "quantize every projection of the decoder layers, not only the routed experts'");
ABSL_FLAG(int, threads, 1, "CPU threads");
ABSL_FLAG(std::string, device, "cpu",
          "where the model runs: cpu, or cuda[:N] for GPU N (attention, gating, the LM head and the experts; cuda is "
          "cuda:0)");
ABSL_FLAG(int, experts_connect_timeout_ms, 10000, "how long to wait for the expert workers");
ABSL_FLAG(std::string, expert_answers, "f32",
          "the answers' dtype on the wire from the expert workers (as moemesh-router --expert-answers): f32, or bf16 "
          "(half the bytes back; results move by bf16 rounding)");
ABSL_FLAG(std::string, expert_rows, "auto",
          "the rows' dtype on the wire to the expert workers (as moemesh-router --expert-rows): auto, f32, bf16, "
          "or fp8 (E4M3 with a scale per 128 columns: a quarter of f32's bytes; results move by FP8 rounding)");
ABSL_FLAG(std::string, experts, "",
          "expert workers, shards in order separated by ',', replicas of a shard by '|' (a:1|b:2,c:3); empty runs "
          "the experts in this process");
ABSL_FLAG(bool, bf16_inputs, false,
          "multiply BF16 weights by inputs rounded to bf16 on the CPU, as a GPU does (AVX-512 BF16 where the CPU "
          "has it: prefill 1.3-1.8x faster); results move by bf16 rounding; not the routers' gates");
ABSL_FLAG(int, kv_cache_tokens, 65536, "KV cache capacity in tokens");
ABSL_FLAG(int, prefill_chunk, 512, "longest prefill chunk per forward step");
ABSL_FLAG(double, gating_temperature, 0.0, "MoE gating temperature T (off when 0)");
ABSL_FLAG(int, dynamic_k_min, 0, "dynamic expert count: smallest k");
ABSL_FLAG(int, dynamic_k_max, 0, "dynamic expert count: largest k (off when 0)");
ABSL_FLAG(double, dynamic_k_p, 0.0, "dynamic expert count: cumulative probability to reach");
ABSL_FLAG(int, expert_shards, 2, "how many expert shards (0 runs the experts inside the routers)");
ABSL_FLAG(std::string, placement, "", "placement file (JSON) for the expert workers and routers");
ABSL_FLAG(bool, monitoring, false, "also start a local Prometheus (Debian's prometheus) scraping the mesh");
ABSL_FLAG(int, prometheus_port, 0, "with --monitoring: Prometheus's port; 0 picks a free one");
ABSL_FLAG(int, scrape_interval_s, 5, "with --monitoring: scrape and rule evaluation interval in seconds");
ABSL_FLAG(std::string, expert_device, "cpu", "where the expert workers compute: cpu, cuda or cuda:N");
ABSL_FLAG(std::string, quantize, "none",
          "quantize the routed experts as they load: none, int8 (a scale a row), int4 (groups of 128), int4:G or "
          "int4:G:asym (G 32, 64 or 128), :q8 after an int4 form for int8 inputs; the CPU only");
ABSL_FLAG(std::string, kv_cache_dtype, "auto",
          "what the KV cache stores: auto (bfloat16 on a GPU, float32 on the CPU), float32, bfloat16, or fp8 / "
          "fp8_e4m3 (scale 1: keys and values past +-448 saturate); other than float32 needs a GPU");
ABSL_FLAG(std::string, router_device, "cpu",
          "where the routers run attention, gating and the LM head: cpu, cuda or cuda:N");
ABSL_FLAG(int, expert_replicas, 1, "replicas of each expert shard");
ABSL_FLAG(int, routers, 1, "how many routers");
ABSL_FLAG(std::string, host, "127.0.0.1", "address the services listen on");
ABSL_FLAG(int, port, 0, "the gateway's port; 0 picks a free one");
ABSL_FLAG(int, http_port, -1, "the gateway's OpenAI-compatible HTTP API port; 0 picks a free one, -1 serves none");
ABSL_FLAG(std::string, api_keys, "",
          "a JSON file of API keys for the gateway: every call then needs one (docs/OPERATIONS.md, Authentication)");
ABSL_FLAG(bool, insecure, false,
          "let the services serve plaintext on a --host other than loopback (they refuse to otherwise)");
ABSL_FLAG(std::string, chat_template, "",
          "a Jinja chat template file for the gateway's /v1/chat/completions (default: the model's own)");
ABSL_FLAG(int, max_running, 64, "requests in each router's batch at once");
ABSL_FLAG(int, max_waiting, 256,
          "requests waiting for admission at each router; past them a new request is refused at once with "
          "RESOURCE_EXHAUSTED");
ABSL_FLAG(int, expert_timeout_ms, 0,
          "each router gives up an expert replica silent this long while its answer is awaited and asks the "
          "shard's next replica; 0: wait forever");
ABSL_FLAG(int, expert_hedge_ms, 0,
          "each router also sends an expert call still unanswered after this long to the shard's next replica, and "
          "takes the first answer; 0: never");
ABSL_FLAG(int, micro_batches, 1,
          "2: each router splits a step of several sequences into two micro-batches in ping-pong, one's attention "
          "running while the other's experts are away (CPU routers with expert shards); 1: one batch a step");
ABSL_FLAG(bool, kvcache, true,
          "start a kvcache service below the routers' KV caches (--kvcache=false: none); its loss costs recompute");
ABSL_FLAG(std::string, kv_dir, "", "the kvcache service's folder (default: a temporary one, removed at exit)");
ABSL_FLAG(int, kvcache_replicas, 1, "kvcache services; sequences and sessions are spread over them by hashing");
ABSL_FLAG(int, kvcache_capacity_mb, 0,
          "each kvcache service's bound on its blocks' bytes (past it the least recently used go); 0: the "
          "service's default, 16384");
ABSL_FLAG(std::string, bin_dir, "",
          "directory of moemesh-expert, moemesh-router and moemesh-gateway (default: beside moemesh, or the build "
          "tree)");
ABSL_FLAG(std::string, target, "", "the gateway, HOST:PORT");
ABSL_FLAG(std::string, service, "", "the gRPC service to ask about (moemesh.v1.Gateway, ...); empty: the whole server");
ABSL_FLAG(int, timeout_ms, 0, "deadline of the call in milliseconds; 0: none");
ABSL_FLAG(std::string, tls_ca, "",
          "reach the service over TLS, verifying it by these roots (PEM); with --tls-cert/--tls-key, present that "
          "certificate (mutual TLS)");
ABSL_FLAG(std::string, tls_cert, "", "the client certificate for mutual TLS (PEM)");
ABSL_FLAG(std::string, tls_key, "", "its private key (PEM)");
ABSL_FLAG(std::string, api_key, "",
          "the API key the gateway wants (its --api-keys), sent as \"authorization: Bearer KEY\"; default: "
          "$MOEMESH_API_KEY");
ABSL_FLAG(std::vector<std::string>, stop, {}, "stop sequences, comma separated");
ABSL_FLAG(int, logprobs, 0, "top-n log probabilities per token (0-20)");
ABSL_FLAG(std::string, session_id, "", "session id (requests of a session share a router)");
ABSL_FLAG(bool, continue_session, false,
          "with --session-id: continue the session's stored conversation (a gateway with --kvcache): send only the "
          "new turn");
ABSL_FLAG(std::string, start_after, "", "list the sessions after this id (the last one of the previous page)");
ABSL_FLAG(int, limit, 100, "at most this many sessions (1 to 1000)");
ABSL_FLAG(std::string, text, "", "the text");
ABSL_FLAG(std::string, ids, "", "token ids, comma separated");
ABSL_FLAG(std::string, model_name, "", "the model's name (default: the only one served)");
ABSL_FLAG(std::string, concurrency, "",
          "load points of a fixed concurrency, comma separated (8 or 1,4,16,64): that many requests in flight, each "
          "sent as the last ended");
ABSL_FLAG(std::string, request_rate, "",
          "load points of a request rate in requests per second, comma separated: Poisson arrivals");
ABSL_FLAG(int, max_concurrency, 0, "with --request-rate: at most this many requests in flight; 0: no bound");
ABSL_FLAG(int, num_prompts, 0, "requests per load point (or --duration-s)");
ABSL_FLAG(double, duration_s, 0, "seconds per load point (or --num-prompts)");
ABSL_FLAG(int, warmup, 0, "requests before each load point's clock starts, not counted");
ABSL_FLAG(int, input_len, 128, "random prompts' length in tokens");
ABSL_FLAG(int, output_len, 128, "tokens to generate per request (a dataset line's output_len overrides it)");
ABSL_FLAG(double, range_ratio, 0, "lengths drawn uniformly within +-this fraction of --input-len and --output-len");
ABSL_FLAG(int, shared_prefix_len, 0, "random ids shared by every prompt before its own (prefix-cache studies)");
ABSL_FLAG(std::string, result_file, "", "also write the results as JSON to this file");
ABSL_FLAG(std::string, backend, "grpc",
          "grpc: the gateway's gRPC API at --target; openai: its OpenAI-compatible HTTP API at --target (the "
          "gateway's --http-port), POST /v1/completions streamed");

namespace moemesh {

const std::vector<Command>& CliCommands() {
  static const std::vector<Command>* const commands = [] {
    const std::vector<FlagUse> sampling = {
        {"temperature"},       {"top_k"}, {"top_p"}, {"min_p"}, {"repetition_penalty"}, {"presence_penalty"},
        {"frequency_penalty"}, {"seed"}};
    const std::vector<FlagUse> engine = {
        {"threads"},       {"device"},        {"kv_cache_tokens"}, {"prefill_chunk"}, {"gating_temperature"},
        {"dynamic_k_min"}, {"dynamic_k_max"}, {"dynamic_k_p"},     {"quantize"},        {"bf16_inputs"},
        {"kv_cache_dtype"}};
    const std::vector<FlagUse> experts = {
        {"experts"}, {"experts_connect_timeout_ms"}, {"expert_rows"}, {"expert_answers"}};
    const FlagUse model_required = {"model", "model directory: config.json, safetensors weights (required)"};
    const FlagUse target = {"target", "the gateway, HOST:PORT (required)"};
    const FlagUse timeout = {"timeout_ms"};
    const FlagUse api_key = {"api_key"};
    const FlagUse tls_ca = {"tls_ca"}, tls_cert = {"tls_cert"}, tls_key = {"tls_key"};
    const FlagUse model_name = {"model_name"};
    const FlagUse tokenizer_file = {"tokenizer",
                                    "tokenizer.json or SentencePiece model file, or a model directory (required)"};
    auto* c = new std::vector<Command>;
    c->push_back({"generate",
                  "generate text with a model in this process",
                  "moemesh generate --model DIR (--prompt TEXT | --prompt-ids 1,2,3) [flags]",
                  "Prints the new tokens only: the text as it is sampled, or with --output json {\"token_ids\", "
                  "\"text\", \"finish_reason\"}. Generation stops at the model's EOS ids (unless --ignore-eos), at "
                  "--stop-token-ids or after --max-new-tokens. Loading the weights is reported on stderr.",
                  {{"flags",
                    {model_required,
                     {"prompt"},
                     {"prompt_ids"},
                     {"tokenizer"},
                     {"max_new_tokens"},
                     {"stop_token_ids"},
                     {"ignore_eos"},
                     {"output"}}},
                   {"sampling", sampling},
                   {"experts on expert workers", experts},
                   {"engine", engine}}});
    c->push_back({"score",
                  "write a prompt's logits to a safetensors file",
                  "moemesh score --model DIR --prompt-ids 1,2,3 --logits-out FILE.safetensors [flags]",
                  "Writes one F32 tensor \"logits\" of shape [positions, vocab].",
                  {{"flags", {model_required, {"prompt_ids"}, {"logits_out", "safetensors file to write (required)"}}},
                   {"engine", engine}}});
    c->push_back(
        {"eval",
         "perplexity of a model over a JSON-lines dataset",
         "moemesh eval --model DIR --dataset FILE.jsonl [flags]",
         "Scores each {\"ids\": [...]} line on its own and prints {\"perplexity\", \"nll_sum\", "
         "\"predicted_tokens\", \"sequences\"}.",
         {{"flags", {model_required, {"dataset", "JSON lines of {\"ids\": [...]} (required)"}}},
          {"experts on expert workers", experts},
          {"engine", engine}}});
    c->push_back({"quantize",
                  "write a checkpoint's projections in int4 as a GPTQ or AWQ checkpoint, or in FP8 blocks",
                  "moemesh quantize --model DIR --out DIR [--quantize int4[:G[:asym]]] [--format gptq|awq|fp8] "
                  "[--all-layers]",
                  "Quantizes the routed experts' projections (with --all-layers every projection of the decoder "
                  "layers) to int4, or with --format fp8 to e4m3 in blocks of 128 x 128 with a scale each "
                  "(DeepSeek-V3's layout), with a progress line, and writes them in the layout --format names, with "
                  "config.json's quantization_config; the other tensors and files are copied. moemesh, vLLM "
                  "and transformers read the result.",
                  {{"flags",
                    {model_required,
                     {"out"},
                     {"quantize", "int4 (groups of 128), int4:G or int4:G:asym (G 32, 64 or 128)"},
                     {"format"},
                     {"all_layers"}}}}});
    c->push_back({"random-model",
                  "write a random-weight checkpoint at a real model's layer shapes, for benchmarks",
                  "moemesh random-model --preset mixtral-8x7b|qwen3-30b-a3b|deepseek-v3 --out DIR [--layers 8] "
                  "[--tokenizer DIR]",
                  "Writes config.json and model.safetensors with --layers of the model's layers (bf16, uniform "
                  "weights of variance 1 / fan-in, norms at 1), unless DIR holds that checkpoint already. With "
                  "--tokenizer, that model directory's tokenizer files are copied in and the vocabulary takes the "
                  "tokenizer's size, so that `moemesh up --model DIR` serves it end to end. Mixtral-8x7B's layers "
                  "are about 2.9 GB each, Qwen3-30B-A3B's 1.3 GB, DeepSeek-V3's MoE layers 23 GB.",
                  {{"flags",
                    {{"preset"},
                     {"out"},
                     {"layers"},
                     {"tokenizer", "a model directory whose tokenizer to copy (optional)"}}}}});
    c->push_back({"tokenize",
                  "text to token ids: {\"text\"} lines in, {\"ids\"} lines out",
                  "moemesh tokenize --tokenizer FILE [--add-special-tokens] < {\"text\": \"...\"} lines",
                  "",
                  {{"flags", {tokenizer_file, {"add_special_tokens"}}}}});
    c->push_back({"detokenize",
                  "token ids to text: {\"ids\"} lines in, {\"text\"} lines out",
                  "moemesh detokenize --tokenizer FILE [--skip-special-tokens] < {\"ids\": [...]} lines",
                  "",
                  {{"flags", {tokenizer_file, {"skip_special_tokens"}}}}});
    c->push_back({"up",
                  "run a whole mesh (expert workers, routers, gateway) locally",
                  "moemesh up [--model DIR] [flags]",
                  "Starts the kvcache service, the expert workers, then the routers, then the gateway, on free ports, "
                  "and prints each "
                  "service as it becomes ready, then `gateway listening on HOST:PORT`. Runs until Ctrl-C or SIGTERM.",
                  {{"mesh",
                    {{"model", "model directory (default: the bundled demo model, models/fortune-moe)"},
                     {"expert_shards"},
                     {"expert_replicas"},
                     {"routers"},
                     {"placement"},
                     {"expert_device"},
                     {"router_device"},
                     {"quantize"},
                     {"bf16_inputs", "every CPU service multiplies BF16 weights by bf16-rounded inputs (as "
                                     "moemesh-router --bf16-inputs)"},
                     {"host"},
                     {"port"},
                     {"http_port"},
                     {"chat_template"},
                     {"api_keys"},
                     {"insecure"},
                     {"bin_dir"},
                     {"kvcache"},
                     {"kvcache_replicas"},
                     {"kvcache_capacity_mb"},
                     {"kv_dir"}}},
                   {"each service",
                    {{"threads", "CPU threads of each service"},
                     {"kv_cache_tokens", "KV cache capacity of each router, in tokens"},
                     {"kv_cache_dtype", "what each router's KV cache stores (as moemesh-router --kv-cache-dtype)"},
                     {"max_running"},
                     {"max_waiting"},
                     {"expert_timeout_ms"},
                     {"expert_hedge_ms"},
                     {"expert_rows"},
                     {"expert_answers"},
                     {"micro_batches"}}},
                   {"monitoring", {{"monitoring"}, {"prometheus_port"}, {"scrape_interval_s"}}}}});
    c->push_back({"client generate",
                  "generate text through a mesh's gateway",
                  "moemesh client generate --target HOST:PORT (--prompt TEXT | --prompt-ids 1,2,3) [flags]",
                  "Streams the text as it is generated, or with --output json prints {\"token_ids\", \"text\", "
                  "\"finish_reason\", \"usage\"} (and \"logprobs\" with --logprobs N).",
                  {{"flags",
                    {target,
                     {"prompt", "prompt text; the gateway tokenizes it"},
                     {"prompt_ids"},
                     model_name,
                     {"max_new_tokens"},
                     {"stop"},
                     {"stop_token_ids"},
                     {"ignore_eos"},
                     {"keep_special_tokens"},
                     {"logprobs"},
                     {"session_id"},
                     {"continue_session"},
                     {"output"},
                     timeout,
                     api_key,
                     tls_ca,
                     tls_cert,
                     tls_key}},
                   {"sampling", sampling}}});
    c->push_back(
        {"client tokenize",
         "tokenize text with a gateway's tokenizer",
         "moemesh client tokenize --target HOST:PORT --text TEXT [--add-special-tokens]",
         "",
         {{"flags", {target, {"text", "the text to tokenize"}, {"add_special_tokens"}, model_name, timeout, api_key, tls_ca, tls_cert, tls_key}}}});
    c->push_back({"client detokenize",
                  "turn token ids into text with a gateway's tokenizer",
                  "moemesh client detokenize --target HOST:PORT --ids 1,2,3 [--skip-special-tokens]",
                  "",
                  {{"flags", {target, {"ids"}, {"skip_special_tokens"}, model_name, timeout, api_key, tls_ca, tls_cert, tls_key}}}});
    c->push_back({"client health",
                  "ask any moemesh service whether it serves (grpc.health.v1)",
                  "moemesh client health --target HOST:PORT [--service NAME]",
                  "Prints SERVING and exits 0, or NOT_SERVING (starting, draining) and exits 1; an unknown service "
                  "or a server not reached is an error (exit 1). With --tls-ca (and --tls-cert, --tls-key) it "
                  "speaks TLS: what an exec probe runs where a kubelet's gRPC probe cannot.",
                  {{"flags", {{"target", "the service, HOST:PORT (required)"}, {"service"}, timeout, tls_ca, tls_cert,
                              tls_key}}}});
    c->push_back({"client models",
                  "list the models a gateway serves",
                  "moemesh client models --target HOST:PORT",
                  "",
                  {{"flags", {target, timeout, api_key, tls_ca, tls_cert, tls_key}}}});
    const FlagUse kv_target = {"target", "the kvcache service, HOST:PORT (required)"};
    c->push_back({"kv stats",
                  "a kvcache service's blocks, bytes, sessions and evictions",
                  "moemesh kv stats --target HOST:PORT",
                  "",
                  {{"flags", {kv_target, timeout}}}});
    c->push_back({"kv sessions",
                  "list a kvcache service's sessions",
                  "moemesh kv sessions --target HOST:PORT [--start-after ID] [--limit 100]",
                  "Prints one JSON line per session, in id order: its id, token count, version and last write.",
                  {{"flags", {kv_target, {"start_after"}, {"limit"}, timeout}}}});
    c->push_back({"kv delete-session",
                  "delete a session from a kvcache service",
                  "moemesh kv delete-session --target HOST:PORT --session-id ID",
                  "",
                  {{"flags", {kv_target, {"session_id", "the session to delete (required)"}, timeout}}}});
    c->push_back(
        {"bench serve",
         "load a running mesh's gateway and report TTFT, ITL, TPOT and throughput",
         "moemesh bench serve --target HOST:PORT (--concurrency N[,N] | --request-rate R[,R]) "
         "(--num-prompts N | --duration-s S) [flags]",
         "Sends greedy requests that ignore EOS (so each generates its output length) over the gRPC API, one load "
         "point after the other, and prints per point: requests, errors by status, output tokens/s, requests/s, "
         "and mean, P50, P90 and P99 of the time to first token (TTFT), the gaps between streamed responses (ITL), "
         "the time per output token after the first (TPOT) and the request's time (E2E); --output json prints "
         "them as JSON. A status line shows progress on a terminal.",
         {{"load",
           {{"target", "the gateway, HOST:PORT: its gRPC port, or its HTTP port with --backend openai (required)"},
            {"backend"},
            {"concurrency"},
            {"request_rate"},
            {"max_concurrency"},
            {"num_prompts"},
            {"duration_s"},
            {"warmup"},
            {"seed", "seed of the prompts and arrivals (-1: 0)"}}},
          {"prompts",
           {{"input_len"},
            {"output_len"},
            {"range_ratio"},
            {"shared_prefix_len"},
            {"dataset", "JSON lines of {\"prompt\": TEXT} or {\"ids\": [...]}, each with an optional "
                        "\"output_len\", instead of random prompts"}}},
          {"output and connection",
           {{"output"}, {"result_file"}, model_name, timeout, api_key, tls_ca, tls_cert, tls_key}}}});
    c->push_back({"help", "list the commands, or a command's flags", "moemesh help [COMMAND]", "", {}});
    c->push_back({"version",
                  "print the version, the commit and how it was built",
                  "moemesh version (or moemesh --version)",
                  "",
                  {}});
    return c;
  }();
  return *commands;
}

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
  absl::StatusOr<QuantSpec> quant = ParseQuantSpec(absl::GetFlag(FLAGS_quantize));
  if (!quant.ok()) return absl::InvalidArgumentError(absl::StrCat("--quantize: ", quant.status().message()));
  e.quantize_experts = *quant;
  e.bf16_inputs = absl::GetFlag(FLAGS_bf16_inputs);
  if (absl::Status st = CheckCpuOnlyFlags(absl::GetFlag(FLAGS_device), *gpu, absl::GetFlag(FLAGS_quantize),
                                          quant->kind != QuantKind::kNone, e.bf16_inputs);
      !st.ok()) {
    return st;
  }
  absl::StatusOr<KvDType> kv_dtype = ParseKvCacheDType(absl::GetFlag(FLAGS_kv_cache_dtype), *gpu >= 0);
  if (!kv_dtype.ok()) return kv_dtype.status();
  if (*gpu >= 0) {
#ifdef MOEMESH_WITH_CUDA
    CudaForwardPass::Options pass;
    pass.kv_dtype = *kv_dtype;
    e.forward_pass = CudaForwardPass::Factory(*gpu, pass);
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
  cmd.quantize = absl::GetFlag(FLAGS_quantize);
  cmd.bf16_inputs = absl::GetFlag(FLAGS_bf16_inputs);
  cmd.placement = absl::GetFlag(FLAGS_placement);
  cmd.monitoring = absl::GetFlag(FLAGS_monitoring);
  cmd.prometheus_port = absl::GetFlag(FLAGS_prometheus_port);
  cmd.scrape_interval_s = absl::GetFlag(FLAGS_scrape_interval_s);
  cmd.routers = absl::GetFlag(FLAGS_routers);
  cmd.host = absl::GetFlag(FLAGS_host);
  cmd.port = absl::GetFlag(FLAGS_port);
  cmd.http_port = absl::GetFlag(FLAGS_http_port);
  cmd.chat_template = absl::GetFlag(FLAGS_chat_template);
  cmd.api_keys = absl::GetFlag(FLAGS_api_keys);
  cmd.insecure = absl::GetFlag(FLAGS_insecure);
  cmd.threads = absl::GetFlag(FLAGS_threads);
  cmd.kv_cache_tokens = absl::GetFlag(FLAGS_kv_cache_tokens);
  cmd.kv_cache_dtype = absl::GetFlag(FLAGS_kv_cache_dtype);
  cmd.max_running = absl::GetFlag(FLAGS_max_running);
  cmd.max_waiting = absl::GetFlag(FLAGS_max_waiting);
  cmd.expert_timeout_ms = absl::GetFlag(FLAGS_expert_timeout_ms);
  cmd.expert_hedge_ms = absl::GetFlag(FLAGS_expert_hedge_ms);
  cmd.expert_rows = absl::GetFlag(FLAGS_expert_rows);
  cmd.expert_answers = absl::GetFlag(FLAGS_expert_answers);
  cmd.micro_batches = absl::GetFlag(FLAGS_micro_batches);
  cmd.bin_dir = absl::GetFlag(FLAGS_bin_dir);
  cmd.kvcache = absl::GetFlag(FLAGS_kvcache);
  cmd.kv_dir = absl::GetFlag(FLAGS_kv_dir);
  cmd.kvcache_replicas = absl::GetFlag(FLAGS_kvcache_replicas);
  cmd.kvcache_capacity_mb = absl::GetFlag(FLAGS_kvcache_capacity_mb);
  const ProgressOutput stdout_progress = ProgressOn(STDOUT_FILENO);  // a status line while the services start
  cmd.terminal = stdout_progress.terminal;
  cmd.columns = stdout_progress.columns;
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
  r.set_continue_session(absl::GetFlag(FLAGS_continue_session));
  r.set_skip_special_tokens(!absl::GetFlag(FLAGS_keep_special_tokens));
  return r;
}

// The client's TLS (services/common/tls.h) from --tls-ca, --tls-cert, --tls-key.
absl::Status SetClientTls() {
  TlsConfig tls;
  tls.ca = absl::GetFlag(FLAGS_tls_ca);
  tls.cert = absl::GetFlag(FLAGS_tls_cert);
  tls.key = absl::GetFlag(FLAGS_tls_key);
  return SetMeshTls(tls);
}

int ClientMain(const std::string& sub) {
  ClientOptions opt{absl::GetFlag(FLAGS_target), absl::GetFlag(FLAGS_timeout_ms), absl::GetFlag(FLAGS_api_key)};
  if (opt.api_key.empty() && std::getenv("MOEMESH_API_KEY") != nullptr) opt.api_key = std::getenv("MOEMESH_API_KEY");
  if (absl::Status st = SetClientTls(); !st.ok()) return ExitWith(st);
  if (opt.target.empty()) return ExitWith(absl::InvalidArgumentError("--target HOST:PORT (the gateway) is required"));
  if (sub == "health") {
    absl::StatusOr<bool> serving = RunClientHealth(opt, absl::GetFlag(FLAGS_service));
    if (!serving.ok()) return ExitWith(serving.status());
    std::cout << (*serving ? "SERVING" : "NOT_SERVING") << std::endl;
    return *serving ? 0 : 1;
  }
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
  return ExitWith(RunClientModels(opt, std::cout));  // "models"
}

// Comma-separated numbers of one kind; INVALID_ARGUMENT naming the flag.
template <typename T>
absl::StatusOr<std::vector<T>> ParseList(const std::string& flag, const std::string& value) {
  std::vector<T> out;
  for (absl::string_view part : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
    T v{};
    bool ok;
    if constexpr (std::is_same_v<T, int>) {
      ok = absl::SimpleAtoi(part, &v);
    } else {
      ok = absl::SimpleAtod(part, &v);
    }
    if (!ok) return absl::InvalidArgumentError(absl::StrCat("--", flag, " ", value, ": expected numbers, comma separated"));
    out.push_back(v);
  }
  return out;
}

int BenchServeMain() {
  BenchServeOptions o;
  o.backend = absl::GetFlag(FLAGS_backend);
  o.target = absl::GetFlag(FLAGS_target);
  o.api_key = absl::GetFlag(FLAGS_api_key);
  if (o.api_key.empty() && std::getenv("MOEMESH_API_KEY") != nullptr) o.api_key = std::getenv("MOEMESH_API_KEY");
  o.model = absl::GetFlag(FLAGS_model_name);
  auto concurrency = ParseList<int>("concurrency", absl::GetFlag(FLAGS_concurrency));
  if (!concurrency.ok()) return ExitWith(concurrency.status());
  o.concurrency = *concurrency;
  auto rates = ParseList<double>("request-rate", absl::GetFlag(FLAGS_request_rate));
  if (!rates.ok()) return ExitWith(rates.status());
  o.rates = *rates;
  o.max_concurrency = absl::GetFlag(FLAGS_max_concurrency);
  o.num_prompts = absl::GetFlag(FLAGS_num_prompts);
  o.duration_s = absl::GetFlag(FLAGS_duration_s);
  o.warmup = absl::GetFlag(FLAGS_warmup);
  o.seed = static_cast<uint64_t>(std::max<int64_t>(0, absl::GetFlag(FLAGS_seed)));
  o.input_len = absl::GetFlag(FLAGS_input_len);
  o.output_len = absl::GetFlag(FLAGS_output_len);
  o.range_ratio = absl::GetFlag(FLAGS_range_ratio);
  o.shared_prefix_len = absl::GetFlag(FLAGS_shared_prefix_len);
  o.dataset = absl::GetFlag(FLAGS_dataset);
  if (absl::GetFlag(FLAGS_timeout_ms) > 0) o.timeout_ms = absl::GetFlag(FLAGS_timeout_ms);
  auto json = JsonOutput();
  if (!json.ok()) return ExitWith(json.status());
  if (absl::Status st = SetClientTls(); !st.ok()) return ExitWith(st);
  auto results = RunBenchServe(o, ProgressOn(STDERR_FILENO));
  if (!results.ok()) return ExitWith(results.status());
  nlohmann::json all = {{"target", o.target}, {"results", nlohmann::json::array()}};
  for (const BenchSummary& s : *results) {
    all["results"].push_back(ToJson(s));
    if (!*json) std::printf("%s", ToTable(s).c_str());
  }
  const std::string dumped = all.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
  if (*json) std::printf("%s\n", dumped.c_str());
  if (const std::string file = absl::GetFlag(FLAGS_result_file); !file.empty()) {
    std::ofstream f(file);
    f << dumped << "\n";
    if (!f) return ExitWith(absl::InternalError(absl::StrCat("cannot write ", file)));
  }
  return 0;
}

int KvMain(const std::string& sub) {
  ClientOptions opt{absl::GetFlag(FLAGS_target), absl::GetFlag(FLAGS_timeout_ms), absl::GetFlag(FLAGS_api_key)};
  if (opt.api_key.empty() && std::getenv("MOEMESH_API_KEY") != nullptr) opt.api_key = std::getenv("MOEMESH_API_KEY");
  if (absl::Status st = SetClientTls(); !st.ok()) return ExitWith(st);
  if (opt.target.empty()) {
    return ExitWith(absl::InvalidArgumentError("--target HOST:PORT (the kvcache service) is required"));
  }
  if (sub == "stats") return ExitWith(RunKvStats(opt, std::cout));
  if (sub == "sessions") {
    return ExitWith(RunKvSessions(opt, absl::GetFlag(FLAGS_start_after), absl::GetFlag(FLAGS_limit), std::cout));
  }
  return ExitWith(RunKvDeleteSession(opt, absl::GetFlag(FLAGS_session_id), std::cout));  // "delete-session"
}

ExpertWorkers ExpertWorkersFlags() {
  return {absl::GetFlag(FLAGS_experts), absl::GetFlag(FLAGS_experts_connect_timeout_ms),
          absl::GetFlag(FLAGS_expert_rows), absl::GetFlag(FLAGS_expert_answers)};
}

// Runs a command that loads a model: generate, score or eval.
int ModelCommandMain(const std::string& command) {
  std::string model = absl::GetFlag(FLAGS_model);
  if (model.empty()) return ExitWith(absl::InvalidArgumentError("--model DIR is required"));
  auto engine = EngineFlags();
  if (!engine.ok()) return ExitWith(engine.status());
  const ProgressOutput progress = ProgressOn(STDERR_FILENO);
  if (command == "eval") {
    EvalCommand cmd{model, absl::GetFlag(FLAGS_dataset), ExpertWorkersFlags(), *engine, progress};
    return ExitWith(RunEval(cmd, std::cout));
  }
  auto ids = ParseTokenIds(absl::GetFlag(FLAGS_prompt_ids));
  if (!ids.ok()) return ExitWith(ids.status());
  if (command == "score") {
    ScoreCommand cmd;
    cmd.model_dir = model;
    cmd.prompt_ids = *ids;
    cmd.engine = *engine;
    cmd.logits_out = absl::GetFlag(FLAGS_logits_out);
    cmd.progress = progress;
    return ExitWith(RunScore(cmd, std::cout));
  }
  GenerateCommand cmd;
  cmd.model_dir = model;
  cmd.prompt_ids = *ids;
  cmd.prompt = absl::GetFlag(FLAGS_prompt);
  cmd.tokenizer_path = absl::GetFlag(FLAGS_tokenizer);
  cmd.experts = ExpertWorkersFlags();
  cmd.engine = *engine;
  cmd.progress = progress;
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

const char kListFooter[] =
    "Run `moemesh help COMMAND` or `moemesh COMMAND --help` for a command's flags\n"
    "and their defaults, and `moemesh --version` for the version.";

}  // namespace

int CliMain(int argc, char** argv) {
  const std::vector<Command>& commands = CliCommands();
  const CommandLine line = SplitCommandLine(std::vector<std::string>(argv + std::min(argc, 1), argv + argc));
  if (line.version) {
    std::printf("%s\n", VersionString().c_str());
    return 0;
  }
  std::vector<std::string> words = line.words;
  bool help = line.help;
  if (!words.empty() && words[0] == "help") {  // moemesh help [COMMAND]
    help = true;
    words.erase(words.begin());
  }
  if (words.empty()) {  // the command list: asked for (exit 0) or no command given (exit 2)
    const std::string list = CommandListText(commands, "", kListFooter);
    std::fputs(list.c_str(), help ? stdout : stderr);
    return help ? 0 : 2;
  }
  const bool group = IsCommandGroup(commands, words[0]);  // "client"
  const std::string group_footer = absl::StrCat("Run `moemesh help ", words[0], " SUBCOMMAND` for its flags.");
  if (group && words.size() == 1) {
    const std::string list = CommandListText(commands, words[0], group_footer);
    if (help) {
      std::fputs(list.c_str(), stdout);
      return 0;
    }
    std::fprintf(stderr, "moemesh: error: `moemesh %s` needs a subcommand\n\n%s", words[0].c_str(), list.c_str());
    return 2;
  }
  size_t used = 0;
  const Command* command = FindCommand(commands, words, &used);
  if (command == nullptr) {
    const std::string what =
        group ? absl::StrCat(words[0], " command \"", words[1], "\"") : absl::StrCat("command \"", words[0], "\"");
    const std::string list =
        group ? CommandListText(commands, words[0], group_footer) : CommandListText(commands, "", kListFooter);
    std::fprintf(stderr, "moemesh: error: unknown %s\n\n%s", what.c_str(), list.c_str());
    return 2;
  }
  if (help && used == words.size()) {
    std::fputs(CommandHelpText(*command).c_str(), stdout);
    return 0;
  }
  if (!line.error.ok()) return ExitWith(line.error);
  if (absl::Status s = ApplyFlags(commands, *command, line.flags); !s.ok()) return ExitWith(s);
  if (used < words.size()) {
    return ExitWith(
        absl::InvalidArgumentError(absl::StrCat("unexpected argument \"", words[used], "\": `moemesh ", command->name,
                                                "` takes flags only; `moemesh help ", command->name, "` lists them")));
  }
  const std::string& name = command->name;
  if (name == "version") {
    std::printf("%s\n", VersionString().c_str());
    return 0;
  }
  if (name == "up") return UpMain();
  if (name.rfind("client ", 0) == 0) return ClientMain(name.substr(7));
  if (name.rfind("kv ", 0) == 0) return KvMain(name.substr(3));
  if (name == "bench serve") return BenchServeMain();
  if (name == "quantize") {
    QuantizeCommand cmd;
    cmd.model_dir = absl::GetFlag(FLAGS_model);
    cmd.out_dir = absl::GetFlag(FLAGS_out);
    std::string spec = absl::GetFlag(FLAGS_quantize);
    cmd.format = absl::GetFlag(FLAGS_format);
    // The command's default: int4, or for FP8 blocks nothing.
    absl::StatusOr<QuantSpec> q = ParseQuantSpec(spec == "none" && cmd.format != "fp8" ? "int4" : spec);
    if (!q.ok()) return ExitWith(absl::InvalidArgumentError(absl::StrCat("--quantize: ", q.status().message())));
    cmd.spec = *q;
    cmd.all_layers = absl::GetFlag(FLAGS_all_layers);
    cmd.progress = ProgressOn(STDERR_FILENO);
    return ExitWith(RunQuantize(cmd, std::cout));
  }
  if (name == "random-model") {
    RandomModelCommand cmd{absl::GetFlag(FLAGS_preset), absl::GetFlag(FLAGS_layers), absl::GetFlag(FLAGS_out),
                           absl::GetFlag(FLAGS_tokenizer)};
    return ExitWith(RunRandomModel(cmd, std::cout));
  }
  if (name == "tokenize" || name == "detokenize") {
    TokenizeCommand cmd{absl::GetFlag(FLAGS_tokenizer), absl::GetFlag(FLAGS_add_special_tokens),
                        absl::GetFlag(FLAGS_skip_special_tokens)};
    if (cmd.tokenizer_path.empty()) return ExitWith(absl::InvalidArgumentError("--tokenizer FILE is required"));
    return ExitWith(name == "tokenize" ? RunTokenize(cmd, std::cin, std::cout)
                                       : RunDetokenize(cmd, std::cin, std::cout));
  }
  return ModelCommandMain(name);  // generate, score, eval
}

}  // namespace moemesh
