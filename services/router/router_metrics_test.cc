#include "services/router/router_metrics.h"

#include <sstream>

#include "absl/synchronization/notification.h"
#include "absl/strings/match.h"
#include "core/engine/engine.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace moemesh {
namespace {

std::string Scrape(prometheus::Registry& r) {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, r.Collect());
  return out.str();
}

TEST(RouterMetricsTest, PhasesBatchCacheAndImbalance) {
  prometheus::Registry r;
  RouterMetrics m(r, /*num_layers=*/2, /*num_experts=*/4);
  StepStats s;
  s.requests = 3;
  s.rows = 10;
  s.total_seconds = 0.010;
  s.expert_seconds = 0.004;
  s.sampling_seconds = 0.001;
  // Layer 0 is dense; layer 1 sends everything to expert 2.
  s.routed = {0, 0, 0, 0, 0, 0, 20, 0};
  GenerationLoop::Stats loop;
  loop.running = 3;
  loop.waiting = 5;
  loop.kv_blocks_used = 25;
  loop.kv_blocks_total = 100;
  m.OnStep(s, loop, /*combine_seconds=*/0.001);
  EXPECT_DOUBLE_EQ(m.load_imbalance(), 4.0);  // max / mean = 20 / 5
  const std::string text = Scrape(r);
  for (const char* want : {"moemesh_router_step_seconds_count{phase=\"attention\"} 1",
                           "moemesh_router_step_seconds_sum{phase=\"dispatch\"} 0.003",
                           "moemesh_router_step_seconds_sum{phase=\"combine\"} 0.001",
                           "moemesh_router_step_seconds_sum{phase=\"attention\"} 0.005",
                           "moemesh_router_batch_requests_sum 3", "moemesh_router_batch_tokens_sum 10",
                           "moemesh_router_requests_running 3", "moemesh_router_requests_waiting 5",
                           "moemesh_router_kv_cache_usage_ratio 0.25",
                           "moemesh_router_routed_tokens_total{expert=\"2\",layer=\"1\"} 20"}) {
    EXPECT_TRUE(absl::StrContains(text, want)) << want << "\n" << text;
  }
  EXPECT_FALSE(absl::StrContains(text, "layer=\"0\"")) << "a dense layer has no experts";
  // Balanced load brings the gauge down towards 1.
  s.routed = {0, 0, 0, 0, 100, 100, 100, 100};
  for (int i = 0; i < 400; ++i) m.OnStep(s, loop, 0);
  EXPECT_NEAR(m.load_imbalance(), 1.0, 0.01);
  m.ObserveDispatch("127.0.0.1:9", 0.002);
  EXPECT_TRUE(absl::StrContains(Scrape(r), "moemesh_router_dispatch_seconds_count{worker=\"127.0.0.1:9\"} 1"));
  // Cache tiers: evictions as counters (from the running totals), occupancy
  // as gauges.
  loop.kv_blocks_cached = 7;
  loop.kv_evictions = 3;
  m.OnStep(s, loop, 0);
  loop.kv_evictions = 5;
  m.OnStep(s, loop, 0);
  m.ObserveHostTier(4096, 2, 1);
  m.ObserveHostTier(8192, 4, 6);
  m.ObserveExpertCalls(2, 0);
  m.ObserveExpertCalls(3, 4);
  m.ObserveExpertWire(1000, 4000);
  m.ObserveExpertWire(1500, 6000);
  const std::string tiers = Scrape(r);
  for (const char* want : {"moemesh_router_kv_cache_cached_blocks 7", "moemesh_router_kv_cache_evictions_total 5",
                           "moemesh_router_kv_host_tier_bytes 8192", "moemesh_router_kv_host_tier_blocks 4",
                           "moemesh_router_kv_host_tier_evictions_total 6", "moemesh_router_expert_retries_total 3",
                           "moemesh_router_expert_hedges_total 4",
                           "moemesh_router_expert_wire_bytes_total{direction=\"sent\"} 1500",
                           "moemesh_router_expert_wire_bytes_total{direction=\"received\"} 6000"}) {
    EXPECT_TRUE(absl::StrContains(tiers, want)) << want << "\n" << tiers;
  }
}

// Every token of every request is routed to top-k experts in every MoE
// layer, and the step observer counts them.
TEST(RouterMetricsTest, CountsEveryRoutedToken) {
  auto engine = Engine::Create("tests/fixtures/mixtral", {});
  ASSERT_TRUE(engine.ok());
  const ModelConfig& c = (*engine)->config();
  prometheus::Registry r;
  RouterMetrics m(r, c.num_layers, c.num_experts);
  auto loop = std::make_unique<GenerationLoop>(
      (*engine)->NewScheduler(8, 256), 8,
      [&m](const StepStats& s, const GenerationLoop::Stats& l) { m.OnStep(s, l, 0); });
  GenerateParams g;
  g.sampling.temperature = 0;  // greedy
  g.max_new_tokens = 5;
  g.ignore_eos = true;
  absl::Notification done;
  ASSERT_TRUE(loop->Submit({1, 2, 3, 4}, g, [&](const StepEvent& ev) {
                     if (ev.finished) done.Notify();
                   }).ok());
  done.WaitForNotification();
  loop.reset();  // the last step's observer has run once the loop has stopped
  // 4 prompt tokens + 4 decoded (the 5th token is sampled, never fed back).
  int moe_layers = 0;
  for (bool b : c.is_moe_layer) moe_layers += b;
  const double want = 8.0 * c.num_experts_per_tok * moe_layers;
  double got = 0;
  for (const auto& family : r.Collect()) {
    if (family.name != "moemesh_router_routed_tokens_total") continue;
    for (const auto& metric : family.metric) got += metric.counter.value;
  }
  EXPECT_EQ(got, want);
}

}  // namespace
}  // namespace moemesh
