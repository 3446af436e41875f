#include "services/router/router_metrics.h"

#include <algorithm>
#include <tuple>

#include "core/metrics/buckets.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace moemesh {
namespace {

// Weight of the newest step in the decayed per-expert load: about the last
// 50 steps count.
constexpr double kDecay = 0.98;

}  // namespace

RouterMetrics::RouterMetrics(prometheus::Registry& r, int num_layers, int num_experts)
    : num_layers_(num_layers), num_experts_(num_experts) {
  auto& phases = prometheus::BuildHistogram()
                     .Name("moemesh_router_step_seconds")
                     .Help("Time of a router step, by phase: attention (everything outside the experts and "
                           "sampling), dispatch (expert round trips), combine, sampling, and the total.")
                     .Register(r);
  const char* names[5] = {"attention", "dispatch", "combine", "sampling", "total"};
  for (int i = 0; i < 5; ++i) phase_[i] = &phases.Add({{"phase", names[i]}}, StepBuckets());
  batch_requests_ = &prometheus::BuildHistogram()
                         .Name("moemesh_router_batch_requests")
                         .Help("Requests in a step's forward pass.")
                         .Register(r)
                         .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256});
  batch_tokens_ = &prometheus::BuildHistogram()
                       .Name("moemesh_router_batch_tokens")
                       .Help("Tokens (decode and prefill) in a step's forward pass.")
                       .Register(r)
                       .Add({}, prometheus::Histogram::BucketBoundaries{1, 4, 16, 64, 256, 1024, 2048, 4096, 8192});
  running_ = &prometheus::BuildGauge()
                  .Name("moemesh_router_requests_running")
                  .Help("Requests in the running batch.")
                  .Register(r)
                  .Add({});
  waiting_ = &prometheus::BuildGauge()
                  .Name("moemesh_router_requests_waiting")
                  .Help("Requests waiting for admission.")
                  .Register(r)
                  .Add({});
  kv_usage_ = &prometheus::BuildGauge()
                   .Name("moemesh_router_kv_cache_usage_ratio")
                   .Help("Share of the KV cache's blocks in use, 0 to 1.")
                   .Register(r)
                   .Add({});
  prefix_query_ = &prometheus::BuildCounter()
                       .Name("moemesh_router_prefix_cache_query_tokens_total")
                       .Help("Prompt tokens of the requests admitted with prefix caching on.")
                       .Register(r)
                       .Add({});
  prefix_hit_ = &prometheus::BuildCounter()
                     .Name("moemesh_router_prefix_cache_hit_tokens_total")
                     .Help("Of those, the tokens whose keys and values came from cached blocks instead of being "
                           "computed.")
                     .Register(r)
                     .Add({});
  tier_hit_ = &prometheus::BuildCounter()
                   .Name("moemesh_router_kv_tier_hit_tokens_total")
                   .Help("Of the prefix-cache hits, the tokens of blocks fetched from a lower tier (host memory, "
                         "the kvcache service).")
                   .Register(r)
                   .Add({});
  tier_fallbacks_ = &prometheus::BuildCounter()
                         .Name("moemesh_router_kv_tier_fallbacks_total")
                         .Help("Fetches from a lower tier that failed or timed out: the prompt was computed.")
                         .Register(r)
                         .Add({});
  tier_stored_ = &prometheus::BuildCounter()
                      .Name("moemesh_router_kv_tier_stored_blocks_total")
                      .Help("Full KV blocks given to the lower tiers.")
                      .Register(r)
                      .Add({});
  kv_cached_ = &prometheus::BuildGauge()
                    .Name("moemesh_router_kv_cache_cached_blocks")
                    .Help("KV-cache blocks no request holds, kept for prefix caching until room is needed.")
                    .Register(r)
                    .Add({});
  kv_evictions_ = &prometheus::BuildCounter()
                       .Name("moemesh_router_kv_cache_evictions_total")
                       .Help("Cached KV-cache blocks dropped to make room, least recently used first.")
                       .Register(r)
                       .Add({});
  host_bytes_ = &prometheus::BuildGauge()
                     .Name("moemesh_router_kv_host_tier_bytes")
                     .Help("Bytes of KV blocks in the host-memory tier (--kv-host-cache-mb).")
                     .Register(r)
                     .Add({});
  host_blocks_ = &prometheus::BuildGauge()
                      .Name("moemesh_router_kv_host_tier_blocks")
                      .Help("KV blocks in the host-memory tier.")
                      .Register(r)
                      .Add({});
  host_evictions_ = &prometheus::BuildCounter()
                         .Name("moemesh_router_kv_host_tier_evictions_total")
                         .Help("Blocks the host-memory tier dropped to stay within its size.")
                         .Register(r)
                         .Add({});
  expert_retries_ = &prometheus::BuildCounter()
                         .Name("moemesh_router_expert_retries_total")
                         .Help("Expert calls sent again to another replica of their shard, after a replica failed "
                               "or stayed silent past --expert-timeout-ms.")
                         .Register(r)
                         .Add({});
  expert_hedges_ = &prometheus::BuildCounter()
                        .Name("moemesh_router_expert_hedges_total")
                        .Help("Expert calls also sent to a second replica because the first had not answered "
                              "within --expert-hedge-ms.")
                        .Register(r)
                        .Add({});
  auto& wire = prometheus::BuildCounter()
                   .Name("moemesh_router_expert_wire_bytes_total")
                   .Help("Bytes of hidden-state rows sent to expert workers (direction=\"sent\"; with FP8 rows "
                         "their scales too) and of answers received (\"received\") through the host, every "
                         "attempt counted; rows shared in GPU memory (cuda-ipc) are not.")
                   .Register(r);
  wire_sent_ = &wire.Add({{"direction", "sent"}});
  wire_received_ = &wire.Add({{"direction", "received"}});
  imbalance_ = &prometheus::BuildGauge()
                    .Name("moemesh_router_expert_load_imbalance")
                    .Help("Max over mean of the tokens routed to each expert over roughly the last 50 steps, "
                          "for the worst MoE layer; 1 is perfect balance.")
                    .Register(r)
                    .Add({});
  routed_family_ = &prometheus::BuildCounter()
                        .Name("moemesh_router_routed_tokens_total")
                        .Help("Tokens routed to each expert, by layer and expert.")
                        .Register(r);
  dispatch_family_ = &prometheus::BuildHistogram()
                          .Name("moemesh_router_dispatch_seconds")
                          .Help("Round trip of one expert call to a worker, from send to answer.")
                          .Register(r);
  routed_.assign(static_cast<size_t>(num_layers) * num_experts, nullptr);
  recent_.assign(routed_.size(), 0.0);
}

void RouterMetrics::OnStep(const StepStats& s, const GenerationLoop::Stats& loop, double combine_seconds) {
  const double dispatch = std::max(0.0, s.expert_seconds - combine_seconds);
  const double attention = std::max(0.0, s.total_seconds - s.expert_seconds - s.sampling_seconds);
  const double values[5] = {attention, dispatch, combine_seconds, s.sampling_seconds, s.total_seconds};
  if (s.requests > 0) {  // else a step of no pass (after cancellations): the gauges only
    for (int i = 0; i < 5; ++i) phase_[i]->Observe(values[i]);
    batch_requests_->Observe(s.requests);
    batch_tokens_->Observe(s.rows);
  }
  running_->Set(loop.running);
  waiting_->Set(loop.waiting);
  kv_usage_->Set(loop.kv_blocks_total > 0 ? static_cast<double>(loop.kv_blocks_used) / loop.kv_blocks_total : 0);
  kv_cached_->Set(loop.kv_blocks_cached);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (loop.kv_evictions > kv_evictions_seen_) {
      kv_evictions_->Increment(static_cast<double>(loop.kv_evictions - kv_evictions_seen_));
      kv_evictions_seen_ = loop.kv_evictions;
    }
  }
  prefix_query_->Increment(static_cast<double>(s.prefix_query_tokens));
  prefix_hit_->Increment(static_cast<double>(s.prefix_hit_tokens));
  tier_hit_->Increment(static_cast<double>(s.tier_hit_tokens));
  tier_fallbacks_->Increment(static_cast<double>(s.tier_fallbacks));
  tier_stored_->Increment(static_cast<double>(s.tier_stored_blocks));

  std::lock_guard<std::mutex> l(mu_);
  double worst = 0;
  for (int layer = 0; layer < num_layers_; ++layer) {
    double total = 0, most = 0;
    bool moe = false;
    for (int e = 0; e < num_experts_; ++e) {
      const size_t i = static_cast<size_t>(layer) * num_experts_ + e;
      const int64_t n = i < s.routed.size() ? s.routed[i] : 0;
      if (n > 0) {
        if (routed_[i] == nullptr) {
          routed_[i] = &routed_family_->Add({{"layer", std::to_string(layer)}, {"expert", std::to_string(e)}});
        }
        routed_[i]->Increment(static_cast<double>(n));
      }
      recent_[i] = recent_[i] * kDecay + static_cast<double>(n);
      total += recent_[i];
      most = std::max(most, recent_[i]);
      moe = moe || routed_[i] != nullptr;
    }
    if (moe && total > 0) worst = std::max(worst, most / (total / num_experts_));
  }
  imbalance_->Set(worst);
}

namespace {

// A counter fed from a running total: what it grew by since `*seen`.
void AddSince(prometheus::Counter* counter, int64_t total, int64_t* seen) {
  if (total > *seen) {
    counter->Increment(static_cast<double>(total - *seen));
    *seen = total;
  }
}

}  // namespace

void RouterMetrics::ObserveExpertCalls(int64_t retries, int64_t hedges) {
  std::lock_guard<std::mutex> lock(mu_);
  AddSince(expert_retries_, retries, &expert_retries_seen_);
  AddSince(expert_hedges_, hedges, &expert_hedges_seen_);
}

void RouterMetrics::ObserveExpertWire(int64_t rows_sent, int64_t answers_received) {
  std::lock_guard<std::mutex> lock(mu_);
  AddSince(wire_sent_, rows_sent, &wire_sent_seen_);
  AddSince(wire_received_, answers_received, &wire_received_seen_);
}

void RouterMetrics::ObserveHostTier(int64_t bytes, int64_t blocks, int64_t evictions) {
  host_bytes_->Set(static_cast<double>(bytes));
  host_blocks_->Set(static_cast<double>(blocks));
  std::lock_guard<std::mutex> lock(mu_);
  if (evictions > host_evictions_seen_) {
    host_evictions_->Increment(static_cast<double>(evictions - host_evictions_seen_));
    host_evictions_seen_ = evictions;
  }
}

void RouterMetrics::ObserveDispatch(const std::string& worker, double seconds) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = dispatch_.find(worker);
  if (it == dispatch_.end()) {
    it = dispatch_.emplace(worker, &dispatch_family_->Add({{"worker", worker}}, StepBuckets())).first;
  }
  it->second->Observe(seconds);
}

double RouterMetrics::load_imbalance() const { return imbalance_->Value(); }

}  // namespace moemesh
