#include "core/metrics/metrics_server.h"

#include "absl/strings/match.h"
#include "core/metrics/http_get.h"
#include "gtest/gtest.h"
#include "prometheus/counter.h"
#include "prometheus/registry.h"

namespace moemesh {
namespace {

TEST(MetricsServerTest, ServesTheRegistryAndProcessMetrics) {
  auto registry = std::make_shared<prometheus::Registry>();
  auto& c = prometheus::BuildCounter().Name("moemesh_test_things_total").Help("things").Register(*registry).Add({});
  auto server = MetricsServer::Start("127.0.0.1", 0, registry);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->port(), 0);
  c.Increment(3);
  auto body = HttpGet("127.0.0.1", (*server)->port(), "/metrics");
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_TRUE(absl::StrContains(*body, "moemesh_test_things_total 3")) << *body;
  EXPECT_TRUE(absl::StrContains(*body, "# TYPE process_cpu_seconds_total counter")) << *body;
  EXPECT_TRUE(absl::StrContains(*body, "process_resident_memory_bytes ")) << *body;
  EXPECT_FALSE(absl::StrContains(*body, "process_resident_memory_bytes 0\n"));
  EXPECT_EQ(HttpGet("127.0.0.1", (*server)->port(), "/nothing").status().code(), absl::StatusCode::kInternal);
}

TEST(MetricsServerTest, ABusyPortIsUnavailable) {
  auto registry = std::make_shared<prometheus::Registry>();
  auto first = MetricsServer::Start("127.0.0.1", 0, registry);
  ASSERT_TRUE(first.ok());
  auto second = MetricsServer::Start("127.0.0.1", (*first)->port(), registry);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
}

TEST(HttpGetTest, UrlEncode) { EXPECT_EQ(UrlEncode("rate(x[1m]) > 0.5"), "rate%28x%5B1m%5D%29%20%3E%200.5"); }

}  // namespace
}  // namespace moemesh
