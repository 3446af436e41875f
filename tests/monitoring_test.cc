// Observability against a real Prometheus: `moemesh up --monitoring` starts
// the mesh and Debian's Prometheus on deploy/prometheus; the test drives
// load through the gateway and queries Prometheus's HTTP API.
//   - P99 end-to-end latency from the histogram agrees with the P99 the
//     client measured, within one bucket;
//   - the recording rules evaluate and the alert rules load;
//   - every query of the Grafana dashboard runs and returns data;
//   - promtool accepts the configuration and the rules.
//
//   monitoring_test MOEMESH_BIN
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "core/common/subprocess.h"
#include "core/common/tcp_connect.h"
#include "core/metrics/buckets.h"
#include "core/metrics/http_get.h"
#include "gtest/gtest.h"
#include "moemesh/v1/gateway.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "services/common/test_certs.h"

namespace moemesh {
namespace {

std::string g_moemesh;

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Runs a command; returns its exit status (stdout is discarded).
int RunQuietly(const std::vector<std::string>& argv) {
  auto p = Subprocess::Start(argv);
  if (!p.ok()) return -1;
  (*p)->ForwardOutput(-1);
  while ((*p)->Poll() < 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  return (*p)->Poll();
}

TEST(MonitoringTest, PromtoolAcceptsTheConfigurationAndRules) {
  EXPECT_EQ(RunQuietly({"/usr/bin/promtool", "check", "rules", "deploy/prometheus/rules/moemesh-recording.yml",
                        "deploy/prometheus/rules/moemesh-alerts.yml"}),
            0);
  // check config also checks the rule files it names.
  EXPECT_EQ(RunQuietly({"/usr/bin/promtool", "check", "config", "--syntax-only", "deploy/prometheus/prometheus.yml"}),
            0);
}

class PrometheusApi {
 public:
  explicit PrometheusApi(const std::string& address) {
    std::vector<std::string> hp = absl::StrSplit(address, ':');
    host_ = hp[0];
    port_ = std::stoi(hp[1]);
  }
  // The result of an instant query; status "success" asserted.
  nlohmann::json Query(const std::string& expr) {
    auto body = HttpGet(host_, port_, "/api/v1/query?query=" + UrlEncode(expr));
    EXPECT_TRUE(body.ok()) << expr << ": " << body.status();
    if (!body.ok()) return nlohmann::json::array();
    auto j = nlohmann::json::parse(*body, nullptr, false);
    EXPECT_EQ(j.value("status", ""), "success") << expr << ": " << *body;
    return j.is_discarded() ? nlohmann::json::array() : j["data"]["result"];
  }
  // The first sample's value, NaN when there is none.
  double Scalar(const std::string& expr) {
    nlohmann::json r = Query(expr);
    if (!r.is_array() || r.empty()) return std::nan("");
    return std::stod(r[0]["value"][1].get<std::string>());
  }
  nlohmann::json Get(const std::string& path) {
    auto body = HttpGet(host_, port_, path);
    EXPECT_TRUE(body.ok()) << body.status();
    return body.ok() ? nlohmann::json::parse(*body, nullptr, false) : nlohmann::json();
  }
  // Polls `expr` until `done` holds for its result or `seconds` pass.
  template <typename F>
  bool WaitFor(const std::string& expr, F done, double seconds = 30) {
    const double end = Now() + seconds;
    while (Now() < end) {
      if (done(Query(expr))) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    return false;
  }

 private:
  std::string host_;
  int port_ = 0;
};

// Under TLS a service's metrics port serves HTTPS with its certificate and
// asks scrapers for one of its CA's: Prometheus with a client certificate
// scrapes it; without one, or over plain HTTP, its target is down.
TEST(MonitoringTest, PrometheusScrapesMetricsOverHttpsWithAClientCertificate) {
  const TestCerts& certs = TestCerts::Get(::testing::TempDir());
  auto expert = Subprocess::Start({ServiceBinaryForTests("moemesh-expert", "MOEMESH_EXPERT_BIN"), "--model",
                                   "models/fortune-moe", "--port", "0", "--metrics-port", "0", "--tls-cert",
                                   certs.Pem("server"), "--tls-key", certs.Key("server"), "--tls-ca",
                                   certs.Pem("ca")});
  ASSERT_TRUE(expert.ok()) << expert.status();
  auto metrics = (*expert)->WaitForLine("metrics on ", absl::Seconds(60));
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  ASSERT_TRUE((*expert)->WaitForLine("listening on ", absl::Seconds(60)).ok());
  (*expert)->ForwardOutput(2);
  const std::string dir = ::testing::TempDir() + "/prometheus_tls";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string target = "[\"" + *metrics + "\"]";
  {
    std::ofstream config(dir + "/prometheus.yml");
    config << "global:\n  scrape_interval: 1s\nscrape_configs:\n"
           << "  - job_name: with-cert\n    scheme: https\n    tls_config:\n      ca_file: " << certs.Pem("ca")
           << "\n      cert_file: " << certs.Pem("client") << "\n      key_file: " << certs.Key("client")
           << "\n    static_configs:\n      - targets: " << target << "\n"
           << "  - job_name: without-cert\n    scheme: https\n    tls_config:\n      ca_file: " << certs.Pem("ca")
           << "\n    static_configs:\n      - targets: " << target << "\n"
           << "  - job_name: plain\n    static_configs:\n      - targets: " << target << "\n";
  }
  auto port = FreeLoopbackPort();
  ASSERT_TRUE(port.ok());
  const std::string address = absl::StrCat("127.0.0.1:", *port);
  auto prometheus = Subprocess::Start({"/usr/bin/prometheus", "--config.file=" + dir + "/prometheus.yml",
                                       "--storage.tsdb.path=" + dir + "/data", "--web.listen-address=" + address,
                                       "--log.level=warn"});
  ASSERT_TRUE(prometheus.ok()) << prometheus.status();
  (*prometheus)->ForwardOutput(2);
  PrometheusApi api(address);
  // Each job's health once every target has been scraped at least once.
  std::map<std::string, std::string> health;
  const double end = Now() + 60;
  while (Now() < end) {
    health.clear();
    auto body = HttpGet("127.0.0.1", *port, "/api/v1/targets?state=active");
    if (body.ok()) {
      auto j = nlohmann::json::parse(*body, nullptr, false);
      if (!j.is_discarded()) {
        for (const auto& t : j["data"]["activeTargets"]) {
          if (t.value("health", "unknown") != "unknown") health[t["labels"].value("job", "")] = t["health"];
        }
      }
    }
    if (health.size() == 3) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_EQ(health["with-cert"], "up");
  EXPECT_EQ(health["without-cert"], "down") << "a scraper without a client certificate";
  EXPECT_EQ(health["plain"], "down") << "plain HTTP on the HTTPS port";
  EXPECT_TRUE(api.WaitFor("process_resident_memory_bytes{job=\"with-cert\"}",
                          [](const nlohmann::json& r) { return r.is_array() && !r.empty(); }, 10));
  (*prometheus)->Stop();
  EXPECT_EQ((*expert)->Stop(absl::Seconds(30)), 0);
}

int BucketIndex(double v, const std::vector<double>& bounds) {
  return static_cast<int>(std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin());
}

TEST(MonitoringTest, PrometheusSeesWhatTheClientSees) {
  auto up = Subprocess::Start({g_moemesh, "up", "--monitoring", "--scrape-interval-s=1", "--expert-shards=2"});
  ASSERT_TRUE(up.ok()) << up.status();
  auto gw = (*up)->WaitForLine("gateway listening on ", absl::Seconds(120));
  ASSERT_TRUE(gw.ok()) << gw.status();
  std::string prometheus;
  for (const std::string& line : (*up)->lines()) {
    if (line.find("prometheus at http://") != std::string::npos) {
      prometheus = line.substr(line.find("http://") + 7);
      prometheus = prometheus.substr(0, prometheus.find(' '));
    }
  }
  ASSERT_FALSE(prometheus.empty());
  (*up)->ForwardOutput(-1);
  PrometheusApi api(prometheus);
  auto stub = v1::Gateway::NewStub(grpc::CreateChannel(*gw, grpc::InsecureChannelCredentials()));

  // A rejected request and an aborted one, for the error panels.
  {
    grpc::ClientContext ctx;
    v1::GenerateRequest bad;
    bad.set_max_tokens(1);
    auto r = stub->Generate(&ctx, bad);
    v1::GenerateResponse resp;
    while (r->Read(&resp)) {
    }
    EXPECT_EQ(r->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    grpc::ClientContext ctx;
    v1::GenerateRequest slow;
    slow.set_text("Once");
    slow.set_max_tokens(500);
    slow.set_ignore_eos(true);
    auto r = stub->Generate(&ctx, slow);
    v1::GenerateResponse resp;
    ASSERT_TRUE(r->Read(&resp));
    ctx.TryCancel();
    while (r->Read(&resp)) {
    }
    r->Finish();
  }
  // Load: 48 requests of 4 to 80 tokens, 4 at a time; the client times each.
  constexpr int kRequests = 48;
  std::vector<double> latency(kRequests);
  std::atomic<int> next{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&] {
      for (int i = next++; i < kRequests; i = next++) {
        v1::GenerateRequest req;
        req.set_text(i % 2 ? "The best way to" : "明月");
        req.set_max_tokens(4 + (i * 17) % 77);
        req.set_ignore_eos(true);
        req.mutable_sampling()->set_temperature(0.8f);
        req.mutable_sampling()->set_seed(i);
        grpc::ClientContext ctx;
        const double t0 = Now();
        auto r = stub->Generate(&ctx, req);
        v1::GenerateResponse resp;
        while (r->Read(&resp)) {
        }
        latency[i] = Now() - t0;
        EXPECT_TRUE(r->Finish().ok());
      }
    });
  }
  for (auto& t : clients) t.join();
  std::vector<double> sorted = latency;
  std::sort(sorted.begin(), sorted.end());
  const double client_p99 = sorted[static_cast<size_t>(std::ceil(0.99 * kRequests)) - 1];

  // Prometheus has scraped all of them.
  ASSERT_TRUE(api.WaitFor("sum(moemesh_requests_total)", [&](const nlohmann::json& r) {
    return !r.empty() && std::stod(r[0]["value"][1].get<std::string>()) == kRequests;
  })) << "Prometheus did not see every request";
  const double server_p99 =
      api.Scalar("histogram_quantile(0.99, sum by (le) (moemesh_e2e_request_latency_seconds_bucket))");
  const std::vector<double> bounds = RequestBuckets();
  EXPECT_LE(std::abs(BucketIndex(server_p99, bounds) - BucketIndex(client_p99, bounds)), 1)
      << "Prometheus P99 " << server_p99 << " s, client P99 " << client_p99 << " s";

  // Recording rules evaluate to numbers.
  for (const char* rule : {"moemesh:time_to_first_token_seconds:p99", "moemesh:inter_token_latency_seconds:p99",
                           "moemesh:e2e_request_latency_seconds:p99", "moemesh:e2e_request_latency_seconds:p50",
                           "moemesh:generation_tokens:rate1m", "moemesh:request_errors:ratio_rate5m"}) {
    EXPECT_TRUE(api.WaitFor(rule, [](const nlohmann::json& r) {
      return !r.empty() && std::isfinite(std::stod(r[0]["value"][1].get<std::string>()));
    })) << rule << " does not evaluate";
  }
  // The alert rules are loaded and healthy.
  nlohmann::json rules = api.Get("/api/v1/rules?type=alert");
  std::vector<std::string> alerts;
  for (const auto& g : rules["data"]["groups"]) {
    for (const auto& r : g["rules"]) {
      alerts.push_back(r["name"]);
      EXPECT_EQ(r.value("health", ""), "ok") << r.dump();
    }
  }
  for (const char* want : {"MoemeshE2ELatencyP99AboveSLO", "MoemeshExpertWorkerDown", "MoemeshHighErrorRatio"}) {
    EXPECT_NE(std::find(alerts.begin(), alerts.end(), want), alerts.end()) << want;
  }

  // Every dashboard query runs and has data; the GPU panels run, and have
  // data only where a GPU is used (not in this CPU mesh).
  std::ifstream in("deploy/grafana/dashboards/moemesh.json");
  nlohmann::json dash = nlohmann::json::parse(in, nullptr, false);
  ASSERT_FALSE(dash.is_discarded());
  int queries = 0;
  for (const auto& panel : dash["panels"]) {
    if (!panel.contains("targets")) continue;
    // GPU panels, and panels that say they have no data until something
    // happens, must run; the others must also have data.
    const std::string description = panel.value("description", "");
    const bool gpu_only = description.find("--device cuda") != std::string::npos ||
                          description.find("(no data until") != std::string::npos;
    for (const auto& t : panel["targets"]) {
      const std::string expr = absl::StrReplaceAll(t["expr"].get<std::string>(), {{"$__rate_interval", "1m"}});
      ++queries;
      if (gpu_only) {
        api.Query(expr);  // asserts that it runs
        continue;
      }
      EXPECT_TRUE(api.WaitFor(expr, [](const nlohmann::json& r) { return r.is_array() && !r.empty(); }, 20))
          << "panel \"" << panel["title"].get<std::string>() << "\": no data for " << expr;
    }
  }
  EXPECT_GT(queries, 25);
  EXPECT_EQ((*up)->Stop(absl::Seconds(30)), 0);
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc < 2) {
    std::fprintf(stderr, "usage: monitoring_test MOEMESH_BIN\n");
    return 2;
  }
  moemesh::g_moemesh = argv[1];
  setenv("MOEMESH_BIN", argv[1], 0);  // where the services are (ServiceBinaryForTests)
  return RUN_ALL_TESTS();
}
