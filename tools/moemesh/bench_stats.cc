#include "tools/moemesh/bench_stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moemesh {

int RequestRecord::output_tokens() const { return std::accumulate(chunk_tokens.begin(), chunk_tokens.end(), 0); }

std::vector<double> RequestRecord::itls() const {
  std::vector<double> out;
  for (size_t i = 1; i < chunk_times.size(); ++i) out.push_back(chunk_times[i] - chunk_times[i - 1]);
  return out;
}

double RequestRecord::tpot() const {
  const int n = output_tokens();
  return n > 1 ? (end - ttft()) / (n - 1) : 0;
}

double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const double rank = p / 100 * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank)), hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - static_cast<double>(lo));
}

Distribution Summarize(std::vector<double> values) {
  Distribution d;
  d.count = values.size();
  if (values.empty()) return d;
  std::sort(values.begin(), values.end());
  d.mean = std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(values.size());
  d.p50 = Percentile(values, 50);
  d.p90 = Percentile(values, 90);
  d.p99 = Percentile(values, 99);
  d.max = values.back();
  return d;
}

std::string StatusName(int code) {
  static const char* kNames[] = {"OK",
                                 "CANCELLED",
                                 "UNKNOWN",
                                 "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED",
                                 "NOT_FOUND",
                                 "ALREADY_EXISTS",
                                 "PERMISSION_DENIED",
                                 "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION",
                                 "ABORTED",
                                 "OUT_OF_RANGE",
                                 "UNIMPLEMENTED",
                                 "INTERNAL",
                                 "UNAVAILABLE",
                                 "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  return code >= 0 && code <= 16 ? kNames[code] : absl::StrCat("CODE_", code);
}

BenchSummary Summarize(const std::string& load, const std::vector<RequestRecord>& records, double seconds) {
  BenchSummary s;
  s.load = load;
  s.seconds = seconds;
  s.requests = records.size();
  std::vector<double> ttft, itl, tpot, e2e;
  for (const RequestRecord& r : records) {
    if (r.code != 0) {
      ++s.errors[StatusName(r.code)];
      continue;
    }
    ++s.completed;
    s.prompt_tokens += r.prompt_tokens;
    s.output_tokens += r.output_tokens();
    ttft.push_back(r.ttft());
    for (double g : r.itls()) itl.push_back(g);
    if (r.output_tokens() > 1) tpot.push_back(r.tpot());
    e2e.push_back(r.end);
  }
  s.ttft = Summarize(std::move(ttft));
  s.itl = Summarize(std::move(itl));
  s.tpot = Summarize(std::move(tpot));
  s.e2e = Summarize(std::move(e2e));
  if (seconds > 0) {
    s.output_tokens_per_s = static_cast<double>(s.output_tokens) / seconds;
    s.requests_per_s = static_cast<double>(s.completed) / seconds;
  }
  return s;
}

namespace {

nlohmann::json Ms(const Distribution& d) {
  return {{"mean", d.mean * 1e3}, {"p50", d.p50 * 1e3}, {"p90", d.p90 * 1e3},
          {"p99", d.p99 * 1e3},   {"max", d.max * 1e3}, {"count", d.count}};
}

}  // namespace

nlohmann::json ToJson(const BenchSummary& s) {
  nlohmann::json errors = nlohmann::json::object();
  for (const auto& [name, n] : s.errors) errors[name] = n;
  return {{"load", s.load},
          {"duration_s", s.seconds},
          {"requests", s.requests},
          {"completed", s.completed},
          {"errors", errors},
          {"prompt_tokens", s.prompt_tokens},
          {"output_tokens", s.output_tokens},
          {"output_tokens_per_s", s.output_tokens_per_s},
          {"requests_per_s", s.requests_per_s},
          {"ttft_ms", Ms(s.ttft)},
          {"itl_ms", Ms(s.itl)},
          {"tpot_ms", Ms(s.tpot)},
          {"e2e_ms", Ms(s.e2e)}};
}

std::string ToTable(const BenchSummary& s) {
  std::string out = absl::StrFormat("%s: %zu requests in %.2f s, %zu completed", s.load, s.requests, s.seconds,
                                    s.completed);
  for (const auto& [name, n] : s.errors) absl::StrAppend(&out, ", ", n, " ", name);
  absl::StrAppendFormat(&out, "\n  output %.1f tokens/s, %.2f requests/s (%lld prompt, %lld output tokens)\n",
                        s.output_tokens_per_s, s.requests_per_s, static_cast<long long>(s.prompt_tokens),
                        static_cast<long long>(s.output_tokens));
  absl::StrAppendFormat(&out, "  %-10s %10s %10s %10s %10s\n", "ms", "mean", "P50", "P90", "P99");
  for (const auto& [name, d] : {std::pair<const char*, const Distribution*>{"TTFT", &s.ttft},
                                {"ITL", &s.itl},
                                {"TPOT", &s.tpot},
                                {"E2E", &s.e2e}}) {
    absl::StrAppendFormat(&out, "  %-10s %10.2f %10.2f %10.2f %10.2f\n", name, d->mean * 1e3, d->p50 * 1e3,
                          d->p90 * 1e3, d->p99 * 1e3);
  }
  return out;
}

}  // namespace moemesh
