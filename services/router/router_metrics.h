#ifndef MOEMESH_SERVICES_ROUTER_ROUTER_METRICS_H_
#define MOEMESH_SERVICES_ROUTER_ROUTER_METRICS_H_

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "core/engine/generation_loop.h"

namespace prometheus {
class Counter;
class Gauge;
class Histogram;
class Registry;
template <typename T>
class Family;
}  // namespace prometheus

namespace moemesh {

// The router's Prometheus metrics (names in docs/OBSERVABILITY.md):
//   moemesh_router_step_seconds{phase}         attention, dispatch, combine, sampling, total
//   moemesh_router_batch_requests, moemesh_router_batch_tokens (histograms)
//   moemesh_router_requests_running, moemesh_router_requests_waiting, moemesh_router_kv_cache_usage_ratio
//   moemesh_router_prefix_cache_{query,hit}_tokens_total, moemesh_router_kv_tier_{hit_tokens,fallbacks,stored_blocks}_total
//   moemesh_router_kv_cache_cached_blocks, moemesh_router_kv_cache_evictions_total
//   moemesh_router_kv_host_tier_{bytes,blocks}, moemesh_router_kv_host_tier_evictions_total
//   moemesh_router_routed_tokens_total{layer, expert}
//   moemesh_router_expert_load_imbalance       max / mean tokens per expert (recent, worst layer)
//   moemesh_router_dispatch_seconds{worker}    one expert worker's round trip
//   moemesh_router_expert_retries_total        expert calls sent again to another replica
//   moemesh_router_expert_hedges_total         expert calls also sent to a second replica (--expert-hedge-ms)
//   moemesh_router_expert_wire_bytes_total{direction}  rows sent, answers received through the host
// OnStep is called from the generation loop's thread, ObserveDispatch from
// the same thread (inside the step); both are thread-safe anyway.
class RouterMetrics {
 public:
  RouterMetrics(prometheus::Registry& registry, int num_layers, int num_experts);

  // After a step. `combine_seconds` is the part of stats.expert_seconds
  // spent combining rows (0 with local experts).
  void OnStep(const StepStats& stats, const GenerationLoop::Stats& loop, double combine_seconds);
  void ObserveDispatch(const std::string& worker, double seconds);
  // The host-memory tier's state (--kv-host-cache-mb), after a step.
  void ObserveHostTier(int64_t bytes, int64_t blocks, int64_t evictions);
  // The expert calls resent to another replica and those hedged so far
  // (RemoteExpertExecutor::retries and hedges).
  void ObserveExpertCalls(int64_t retries, int64_t hedges);
  // The bytes of rows sent and answers received so far
  // (RemoteExpertExecutor::row_bytes_sent and answer_bytes_received).
  void ObserveExpertWire(int64_t rows_sent, int64_t answers_received);

  // The imbalance gauge's value, for tests.
  double load_imbalance() const;

 private:
  prometheus::Histogram* phase_[5];
  prometheus::Histogram* batch_requests_;
  prometheus::Histogram* batch_tokens_;
  prometheus::Gauge* running_;
  prometheus::Gauge* waiting_;
  prometheus::Gauge* kv_usage_;
  prometheus::Counter* prefix_query_;
  prometheus::Counter* prefix_hit_;
  prometheus::Counter* tier_hit_;
  prometheus::Counter* tier_fallbacks_;
  prometheus::Counter* tier_stored_;
  prometheus::Counter* kv_evictions_;
  prometheus::Counter* expert_retries_;
  prometheus::Counter* expert_hedges_;
  int64_t expert_retries_seen_ = 0, expert_hedges_seen_ = 0;
  prometheus::Counter* wire_sent_;
  prometheus::Counter* wire_received_;
  int64_t wire_sent_seen_ = 0, wire_received_seen_ = 0;
  prometheus::Gauge* kv_cached_;
  prometheus::Gauge* host_bytes_;
  prometheus::Gauge* host_blocks_;
  prometheus::Counter* host_evictions_;
  int64_t kv_evictions_seen_ = 0, host_evictions_seen_ = 0;  // guarded by mu_
  prometheus::Gauge* imbalance_;
  prometheus::Family<prometheus::Counter>* routed_family_;
  prometheus::Family<prometheus::Histogram>* dispatch_family_;
  const int num_layers_, num_experts_;

  mutable std::mutex mu_;
  std::vector<prometheus::Counter*> routed_;  // [layer * E + e], made on first use
  std::vector<double> recent_;                // decayed tokens per (layer, expert)
  std::map<std::string, prometheus::Histogram*> dispatch_;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_ROUTER_ROUTER_METRICS_H_
