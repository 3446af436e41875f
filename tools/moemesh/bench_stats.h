#ifndef MOEMESH_TOOLS_MOEMESH_BENCH_STATS_H_
#define MOEMESH_TOOLS_MOEMESH_BENCH_STATS_H_

#include <map>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace moemesh {

// What one request of `moemesh bench serve` saw, in seconds from when it
// was sent: each response that carried tokens (its time and how many).
struct RequestRecord {
  int prompt_tokens = 0;
  std::vector<double> chunk_times;  // increasing
  std::vector<int> chunk_tokens;
  double end = 0;   // the call's end
  int code = 0;     // its gRPC status code; 0: OK

  int output_tokens() const;
  // Time to first token; inter-token latencies (the gaps between
  // responses, one per response after the first, as vLLM's bench counts
  // them); time per output token after the first ((end - ttft) / (n - 1)).
  double ttft() const { return chunk_times.empty() ? 0 : chunk_times.front(); }
  std::vector<double> itls() const;
  double tpot() const;
};

// Mean and percentiles of a sample (linear between ranks, as numpy's).
struct Distribution {
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
  size_t count = 0;
};
Distribution Summarize(std::vector<double> values);
double Percentile(const std::vector<double>& sorted, double p);  // p in [0, 100]

// One load point: its requests (the warm-up left out) over `seconds`.
struct BenchSummary {
  std::string load;  // "concurrency 8", "rate 4/s"
  double seconds = 0;
  size_t requests = 0, completed = 0;
  std::map<std::string, size_t> errors;  // by status name ("UNAVAILABLE")
  int64_t prompt_tokens = 0, output_tokens = 0;
  Distribution ttft, itl, tpot, e2e;  // of the completed requests, seconds
  double output_tokens_per_s = 0, requests_per_s = 0;
};
BenchSummary Summarize(const std::string& load, const std::vector<RequestRecord>& records, double seconds);

// The gRPC status name of a code ("OK", "UNAVAILABLE", ...).
std::string StatusName(int code);

// As JSON (times in milliseconds), and as the table `bench serve` prints.
nlohmann::json ToJson(const BenchSummary& s);
std::string ToTable(const BenchSummary& s);

}  // namespace moemesh

#endif  // MOEMESH_TOOLS_MOEMESH_BENCH_STATS_H_
