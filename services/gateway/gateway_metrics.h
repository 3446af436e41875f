#ifndef MOEMESH_SERVICES_GATEWAY_GATEWAY_METRICS_H_
#define MOEMESH_SERVICES_GATEWAY_GATEWAY_METRICS_H_

#include <chrono>
#include <string>
#include <vector>

namespace prometheus {
class Counter;
class Gauge;
class Histogram;
class Registry;
class Summary;
template <typename T>
class Family;
}  // namespace prometheus

namespace moemesh {

// The gateway's Prometheus metrics, seen from the client's side of the mesh
// (names as vLLM's, with the moemesh_ prefix; docs/OBSERVABILITY.md):
//   moemesh_time_to_first_token_seconds, moemesh_inter_token_latency_seconds,
//   moemesh_e2e_request_latency_seconds, moemesh_request_queue_time_seconds
//       histograms, and for the first three a Summary named ..._window_seconds
//       with quantiles 0.5, 0.9, 0.99 over a sliding 60 s window;
//   moemesh_prompt_tokens_total, moemesh_generation_tokens_total;
//   moemesh_requests_total{finish_reason}, moemesh_request_status_total{code};
//   moemesh_requests_running, moemesh_requests_waiting;
//   moemesh_requests_aborted_total, moemesh_requests_rejected_total{reason};
//   moemesh_repetitive_responses_total (responses with a repeated n-gram).
// Thread-safe.
class GatewayMetrics {
 public:
  explicit GatewayMetrics(prometheus::Registry& registry);

  // One admitted request, from admission to its end. Not thread-safe.
  class Request {
   public:
    explicit Request(GatewayMetrics* m);  // counts it as waiting
    ~Request();                           // counts it as done (aborted unless Finish was called)
    // Tokens arrived now; the first call ends the wait (time to first token),
    // later ones observe the inter-token latency of each token.
    void Tokens(int n);
    void QueueTime(double seconds);
    // The generation ended normally with `reason` ("length", "stop").
    void Finish(const std::string& reason, int prompt_tokens, const std::vector<int>& output_ids);
    // It was refused after admission (no router could take it): counted
    // as rejected by the caller, not as aborted.
    void Refused() { finished_ = true; }

   private:
    GatewayMetrics* m_;
    std::chrono::steady_clock::time_point start_, last_;
    bool started_ = false, finished_ = false;
  };

  // Every call's final gRPC status, by its canonical name ("OK", ...).
  void CountStatus(const std::string& code);
  // A request refused before it reached a router.
  void CountRejected(const std::string& reason);
  // A session turn whose answer could not be saved to the session's history.
  void CountSessionSaveError();

 private:
  friend class Request;
  prometheus::Histogram *ttft_, *itl_, *e2e_, *queue_;
  prometheus::Summary *ttft_window_, *itl_window_, *e2e_window_;
  prometheus::Counter *prompt_tokens_, *generation_tokens_, *aborted_, *repetitive_, *session_save_errors_;
  prometheus::Gauge *running_, *waiting_;
  prometheus::Family<prometheus::Counter>* finished_;
  prometheus::Family<prometheus::Counter>* status_;
  prometheus::Family<prometheus::Counter>* rejected_;
};

// True when some n-gram of `ids` occurs more than `max_repeats` times: the
// degenerate looping that the repetition-rate metric counts. Defaults: 4
// tokens repeated more than 3 times.
bool IsRepetitive(const std::vector<int>& ids, int n = 4, int max_repeats = 3);

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_GATEWAY_GATEWAY_METRICS_H_
