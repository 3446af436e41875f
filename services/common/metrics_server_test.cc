#include "services/common/metrics_server.h"

#include <httplib.h>

#include "absl/strings/match.h"
#include "core/metrics/http_get.h"
#include "gtest/gtest.h"
#include "prometheus/counter.h"
#include "prometheus/registry.h"
#include "services/common/http_tls.h"
#include "services/common/test_certs.h"

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

// Under TLS: HTTPS with the service's certificate, and where it asks for
// client certificates, only scrapers with one of its CA get the metrics.
TEST(MetricsServerTest, ServesHttpsUnderTls) {
  const TestCerts& certs = TestCerts::Get(::testing::TempDir());
  auto registry = std::make_shared<prometheus::Registry>();
  prometheus::BuildCounter().Name("moemesh_test_things_total").Help("things").Register(*registry).Add({}).Increment(5);
  TlsConfig config{certs.Pem("server"), certs.Key("server"), certs.Pem("ca")};
  config.client_auth = true;
  auto tls = HttpTls::Create(config);
  ASSERT_TRUE(tls.ok()) << tls.status();
  auto server = MetricsServer::Start("127.0.0.1", 0, registry, *tls);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_TRUE((*server)->https());
  auto scrape = [&](const std::string& client) {
    httplib::SSLClient c("127.0.0.1", (*server)->port(), client.empty() ? "" : certs.Pem(client),
                         client.empty() ? "" : certs.Key(client));
    c.set_ca_cert_path(certs.Pem("ca").c_str());
    c.enable_server_certificate_verification(true);
    c.set_connection_timeout(3);
    c.set_read_timeout(3);
    return c.Get("/metrics");
  };
  auto res = scrape("client");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_TRUE(absl::StrContains(res->body, "moemesh_test_things_total 5")) << res->body;
  EXPECT_TRUE(absl::StrContains(res->get_header_value("Content-Type"), "text/plain; version=0.0.4"));
  EXPECT_FALSE(scrape("")) << "a scraper without a client certificate";
  EXPECT_FALSE(HttpGet("127.0.0.1", (*server)->port(), "/metrics").ok()) << "plain HTTP on the HTTPS port";
}

TEST(HttpGetTest, UrlEncode) { EXPECT_EQ(UrlEncode("rate(x[1m]) > 0.5"), "rate%28x%5B1m%5D%29%20%3E%200.5"); }

}  // namespace
}  // namespace moemesh
