#ifndef MOEMESH_TOOLS_MOEMESH_BENCH_SERVE_H_
#define MOEMESH_TOOLS_MOEMESH_BENCH_SERVE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moemesh/v1/gateway.pb.h"
#include "tools/moemesh/bench_stats.h"
#include "tools/moemesh/progress.h"

namespace moemesh {

// `moemesh bench serve`: loads a running gateway as `vllm bench serve`
// does and reports what clients saw (docs/PERFORMANCE.md, "Serving").
struct BenchServeOptions {
  // "grpc": the gateway's gRPC API at `target`; "openai": its
  // OpenAI-compatible HTTP API (POST /v1/completions, streamed) at `target`.
  std::string backend = "grpc";
  std::string target;   // HOST:PORT
  std::string api_key;  // empty: none
  std::string model;    // empty: the gateway's first
  // The load points, run one after the other: each concurrency (that many
  // requests in flight, each sent as the last ended), or each rate in
  // requests per second (Poisson arrivals; at most max_concurrency in
  // flight, 0: no bound). Exactly one of the two is given.
  std::vector<int> concurrency;
  std::vector<double> rates;
  int max_concurrency = 0;
  // How much per load point: num_prompts requests, or (0) as many as
  // `duration_s` allows; `warmup` requests first, not counted.
  int num_prompts = 0;
  double duration_s = 0;
  int warmup = 0;
  uint64_t seed = 0;
  // Prompts: random token ids, input_len long and output_len to generate,
  // each drawn uniformly within +-range_ratio of them; a shared prefix of
  // shared_prefix_len random ids before every prompt (prefix caching); or
  // a JSON-lines dataset instead.
  int input_len = 128, output_len = 128;
  double range_ratio = 0;
  int shared_prefix_len = 0;
  std::string dataset;
  bool ignore_eos = true;  // every request generates its output length
  float temperature = 0;
  int timeout_ms = 10000;  // reaching the gateway at the start
};

// One request's prompt: token ids or text, and the tokens to generate.
struct BenchPrompt {
  std::vector<int> ids;
  std::string text;
  int output_len = 0;
};

// `count` random prompts for `model` (INVALID_ARGUMENT for lengths the
// model cannot take; FAILED_PRECONDITION without its vocabulary size):
// the shared prefix drawn from options.seed, the rest from it and
// `stream`, so that each load point gets prompts of its own.
absl::StatusOr<std::vector<BenchPrompt>> RandomPrompts(const BenchServeOptions& options, const v1::ModelInfo& model,
                                                       size_t count, uint64_t stream = 0);
// A dataset's prompts: one JSON object a line, {"prompt": "text"} or
// {"ids": [...]}, with "output_len" (else `output_len`). INVALID_ARGUMENT
// naming the line for one that is not.
absl::StatusOr<std::vector<BenchPrompt>> LoadBenchDataset(const std::string& path, int output_len);

// Runs every load point; progress on `progress` (a status line on a
// terminal, nothing otherwise).
absl::StatusOr<std::vector<BenchSummary>> RunBenchServe(const BenchServeOptions& options,
                                                        const ProgressOutput& progress);

}  // namespace moemesh

#endif  // MOEMESH_TOOLS_MOEMESH_BENCH_SERVE_H_
