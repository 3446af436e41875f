#include "services/gateway/gateway_metrics.h"

#include <map>

#include "core/metrics/buckets.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "prometheus/summary.h"

namespace moemesh {
namespace {

prometheus::Summary::Quantiles WindowQuantiles() { return {{0.5, 0.01}, {0.9, 0.005}, {0.99, 0.001}}; }

double Seconds(std::chrono::steady_clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

GatewayMetrics::GatewayMetrics(prometheus::Registry& r) {
  auto histogram = [&r](const char* name, const char* help, const std::vector<double>& buckets) {
    return &prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add({}, buckets);
  };
  auto summary = [&r](const char* name, const char* help) {
    return &prometheus::BuildSummary().Name(name).Help(help).Register(r).Add({}, WindowQuantiles(),
                                                                             std::chrono::seconds(60), 5);
  };
  auto counter = [&r](const char* name, const char* help) {
    return &prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
  };
  auto gauge = [&r](const char* name, const char* help) {
    return &prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
  };
  ttft_ = histogram("moemesh_time_to_first_token_seconds", "Time from admission to the first token.",
                    TtftBuckets());
  itl_ = histogram("moemesh_inter_token_latency_seconds", "Time between consecutive tokens of a stream.",
                   InterTokenBuckets());
  e2e_ = histogram("moemesh_e2e_request_latency_seconds", "Time from admission to the last token.",
                   RequestBuckets());
  queue_ = histogram("moemesh_request_queue_time_seconds",
                     "Time a request waited in a router's queue before it joined the batch.", RequestBuckets());
  ttft_window_ = summary("moemesh_time_to_first_token_window_seconds",
                         "Time to first token: quantiles over a sliding 60 s window.");
  itl_window_ = summary("moemesh_inter_token_latency_window_seconds",
                        "Inter-token latency: quantiles over a sliding 60 s window.");
  e2e_window_ = summary("moemesh_e2e_request_latency_window_seconds",
                        "End-to-end request latency: quantiles over a sliding 60 s window.");
  prompt_tokens_ = counter("moemesh_prompt_tokens_total", "Prompt tokens of finished requests.");
  generation_tokens_ = counter("moemesh_generation_tokens_total", "Tokens generated and sent to clients.");
  aborted_ = counter("moemesh_requests_aborted_total",
                     "Admitted requests that did not finish: the client left, its deadline passed, or the mesh "
                     "failed mid-stream.");
  repetitive_ = counter("moemesh_repetitive_responses_total",
                        "Finished responses in which some 4-token sequence occurs more than 3 times; divide by "
                        "moemesh_requests_total for the repetition rate.");
  running_ = gauge("moemesh_requests_running", "Requests streaming tokens now.");
  waiting_ = gauge("moemesh_requests_waiting", "Admitted requests that have no token yet.");
  finished_ = &prometheus::BuildCounter()
                   .Name("moemesh_requests_total")
                   .Help("Requests that finished, by finish reason (length, stop).")
                   .Register(r);
  status_ = &prometheus::BuildCounter()
                 .Name("moemesh_request_status_total")
                 .Help("Generate calls by final gRPC status code.")
                 .Register(r);
  rejected_ = &prometheus::BuildCounter()
                   .Name("moemesh_requests_rejected_total")
                   .Help("Requests refused before generation, by reason (the gRPC status code).")
                   .Register(r);
  session_save_errors_ = &prometheus::BuildCounter()
                              .Name("moemesh_session_save_errors_total")
                              .Help("Session turns answered whose history could not be saved (another turn of the "
                                    "session wrote first, or the kvcache service was unreachable).")
                              .Register(r)
                              .Add({});
}

void GatewayMetrics::CountStatus(const std::string& code) { status_->Add({{"code", code}}).Increment(); }

void GatewayMetrics::CountRejected(const std::string& reason) { rejected_->Add({{"reason", reason}}).Increment(); }

void GatewayMetrics::CountSessionSaveError() { session_save_errors_->Increment(); }

GatewayMetrics::Request::Request(GatewayMetrics* m) : m_(m), start_(std::chrono::steady_clock::now()) {
  m_->waiting_->Increment();
}

GatewayMetrics::Request::~Request() {
  (started_ ? m_->running_ : m_->waiting_)->Decrement();
  if (!finished_) m_->aborted_->Increment();
}

void GatewayMetrics::Request::QueueTime(double seconds) { m_->queue_->Observe(seconds); }

void GatewayMetrics::Request::Tokens(int n) {
  if (n <= 0) return;
  const auto now = std::chrono::steady_clock::now();
  int itl_tokens = n;
  double gap = 0;
  if (!started_) {
    started_ = true;
    m_->waiting_->Decrement();
    m_->running_->Increment();
    const double ttft = Seconds(now - start_);
    m_->ttft_->Observe(ttft);
    m_->ttft_window_->Observe(ttft);
    // Tokens that came together with the first share the time since it.
    itl_tokens = n - 1;
  } else {
    gap = Seconds(now - last_);
  }
  for (int i = 0; i < itl_tokens; ++i) {
    m_->itl_->Observe(gap / n);
    m_->itl_window_->Observe(gap / n);
  }
  m_->generation_tokens_->Increment(n);
  last_ = now;
}

void GatewayMetrics::Request::Finish(const std::string& reason, int prompt_tokens,
                                     const std::vector<int>& output_ids) {
  finished_ = true;
  const double e2e = Seconds(std::chrono::steady_clock::now() - start_);
  m_->e2e_->Observe(e2e);
  m_->e2e_window_->Observe(e2e);
  m_->prompt_tokens_->Increment(prompt_tokens);
  m_->finished_->Add({{"finish_reason", reason}}).Increment();
  if (IsRepetitive(output_ids)) m_->repetitive_->Increment();
}

bool IsRepetitive(const std::vector<int>& ids, int n, int max_repeats) {
  if (n <= 0 || static_cast<int>(ids.size()) < n) return false;
  std::map<std::vector<int>, int> seen;
  for (size_t i = 0; i + n <= ids.size(); ++i) {
    if (++seen[std::vector<int>(ids.begin() + i, ids.begin() + i + n)] > max_repeats) return true;
  }
  return false;
}

}  // namespace moemesh
