#include "services/common/service_main.h"

#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "services/common/http_tls.h"
#include "services/common/metrics_server.h"
#include "services/common/drain.h"
#include "services/common/server_util.h"
#include "services/common/tls.h"

// The flags every service has (--help lists them with the service's own).
ABSL_FLAG(std::string, host, "127.0.0.1", "address to listen on");
ABSL_FLAG(int, port, 0, "port to listen on; 0 picks a free one");
ABSL_FLAG(int, metrics_port, 0, "port of the Prometheus /metrics endpoint; 0 picks a free one, -1 serves none");
ABSL_FLAG(int, max_message_mb, 0,
          "largest message a call may send here, in MiB (larger ones get RESOURCE_EXHAUSTED); 0: the service's "
          "default (16 for the gateway's public API, 512 for the mesh's internal services)");

ABSL_FLAG(std::string, tls_cert, "", "TLS: this service's certificate chain (PEM); with it, the gRPC port speaks TLS");
ABSL_FLAG(std::string, tls_key, "", "TLS: the certificate's private key (PEM)");
ABSL_FLAG(std::string, tls_ca, "",
          "TLS: the roots (PEM) that peers' certificates must chain to: the services this one calls are then "
          "reached over TLS, and (with --tls-client-auth) its own clients must present a certificate");
ABSL_FLAG(bool, tls_client_auth, true,
          "with --tls-cert: require and verify client certificates (mutual TLS); false for a gateway whose public "
          "clients have none");
ABSL_FLAG(int, tls_refresh_s, 60, "TLS files are read again this often, so rotated certificates are taken");
ABSL_FLAG(bool, insecure, false,
          "serve plaintext on an address other than loopback (refused otherwise: give --tls-cert, or this)");
ABSL_FLAG(int, max_metadata_kb, 16, "largest headers (metadata) a call may send, in KiB; larger calls are refused");
ABSL_FLAG(int, max_streams_per_connection, 1024, "calls at once on one client connection");
ABSL_FLAG(int, drain_grace_s, 5,
          "on SIGTERM, how long the calls in progress may go on before the server stops (match the orchestrator's "
          "grace period: Kubernetes' terminationGracePeriodSeconds)");
ABSL_FLAG(int, max_connection_idle_s, 300, "an idle client connection is closed after this many seconds; 0: never");
ABSL_FLAG(int, min_ping_interval_s, 10,
          "a client may send keepalive pings at most this often while no call runs; two pings sooner close the "
          "connection");

namespace moemesh {
namespace {

// The file whose flags are listed by --help beside the service's main.cc.
constexpr char kThisFile[] = "services/common/service_main.cc";


sigset_t TerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

// Blocks SIGINT and SIGTERM in this and every later thread (so that
// WaitForTerminationSignal takes them) and parses the Abseil flags, which
// may be written with dashes.
void InitService(const std::string& name, int argc, char** argv, const char* usage) {
  const sigset_t set = TerminationSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  absl::SetProgramUsageMessage(usage);
  // --help lists the service's own flags and those defined here. Abseil's
  // default looks for them in a file named after the binary
  // (moemesh-expert.cc) and found none: the services define theirs in
  // main.cc.
  absl::FlagsUsageConfig config;
  config.contains_help_flags = config.contains_helpshort_flags = [](absl::string_view file) {
    return file == "main.cc" || absl::EndsWith(file, "/main.cc") || absl::EndsWith(file, kThisFile);
  };
  config.normalize_filename = [](absl::string_view file) {
    const size_t at = file.rfind("services/");
    return std::string(at == absl::string_view::npos ? file : file.substr(at));
  };
  absl::SetFlagsUsageConfig(config);
  std::vector<std::string> args = NormalizeFlagNames(argc, argv);
  std::vector<char*> argp;
  for (std::string& a : args) argp.push_back(a.data());
  std::vector<char*> rest = absl::ParseCommandLine(static_cast<int>(argp.size()), argp.data());
  if (rest.size() > 1) {
    std::fprintf(stderr, "%s: error: unexpected argument \"%s\" (flags start with --; see --help)\n",
                 name.c_str(), rest[1]);
    std::exit(2);
  }
}

// HOST:PORT, with an IPv6 host in brackets.
std::string HostPort(const std::string& host, int port) {
  const bool v6 = host.find(':') != std::string::npos && host.front() != '[';
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

// Blocks until SIGINT or SIGTERM, then returns.
void WaitForTerminationSignal() {
  const sigset_t set = TerminationSignals();
  int sig = 0;
  sigwait(&set, &sig);
}

// Stops a server: marks it NOT_SERVING for health checks, lets the calls
// that `in_flight` counts finish for up to `grace`, then shuts down at once
// (cancelling what is left).
void ShutdownGracefully(grpc::Server* server, const std::function<int()>& in_flight,
                        std::chrono::milliseconds grace) {
  SetDraining(true);  // new calls are refused from here on
  if (grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService()) {
    health->SetServingStatus(false);
  }
  const auto deadline = std::chrono::steady_clock::now() + grace;
  while (in_flight && in_flight() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  server->Shutdown(std::chrono::system_clock::now());
}

}  // namespace

ServiceMain::ServiceMain(std::string name, int argc, char** argv, const char* usage) : name_(std::move(name)) {
  InitService(name_, argc, argv, usage);
  host_ = absl::GetFlag(FLAGS_host);
  port_ = absl::GetFlag(FLAGS_port);
  metrics_port_ = absl::GetFlag(FLAGS_metrics_port);
  max_message_mb_ = absl::GetFlag(FLAGS_max_message_mb);
  if (max_message_mb_ < 0 || max_message_mb_ > (kMaxMessageBytes >> 20)) {
    std::exit(Fail(absl::StrCat("--max-message-mb must be in [0, ", kMaxMessageBytes >> 20, "]"), 2));
  }
  // Start-up misconfiguration: say so and stop, as for a flag that does not parse.
  if (port_ < 0 || port_ > 65535) std::exit(Fail("--port must be in [0, 65535] (0 picks a free one)", 2));
  if (metrics_port_ < -1 || metrics_port_ > 65535) {
    std::exit(Fail("--metrics-port must be in [0, 65535], or -1 for no metrics endpoint", 2));
  }
  TlsConfig tls;
  tls.cert = absl::GetFlag(FLAGS_tls_cert);
  tls.key = absl::GetFlag(FLAGS_tls_key);
  tls.ca = absl::GetFlag(FLAGS_tls_ca);
  tls.client_auth = absl::GetFlag(FLAGS_tls_client_auth);
  tls.refresh_s = absl::GetFlag(FLAGS_tls_refresh_s);
  if (absl::Status st = SetMeshTls(tls); !st.ok()) std::exit(Fail(st, 2));
  const bool loopback = host_ == "127.0.0.1" || host_ == "localhost" || host_ == "::1" || host_ == "[::1]";
  if (!tls.server_tls() && !loopback && !absl::GetFlag(FLAGS_insecure)) {
    std::exit(Fail(absl::StrCat("--host ", host_, " is not loopback: serving plaintext there needs --insecure "
                                "(or give --tls-cert and --tls-key)"),
                   2));
  }
}

int ServiceMain::Fail(absl::string_view message, int exit_code) const {
  std::fprintf(stderr, "%s: error: %s\n", name_.c_str(), std::string(message).c_str());
  return exit_code;
}

void ServiceMain::Warn(absl::string_view message) const {
  std::fprintf(stderr, "%s: warning: %s\n", name_.c_str(), std::string(message).c_str());
}

int ServiceMain::Serve(const std::vector<grpc::Service*>& services, std::shared_ptr<prometheus::Registry> registry,
                       const std::function<int()>& in_flight,
                       const std::function<std::shared_ptr<prometheus::Collectable>()>& more_metrics) const {
  // Under TLS the metrics port serves HTTPS with the gRPC port's certificate.
  std::shared_ptr<HttpTls> metrics_tls;
  if (MeshTls().server_tls() && metrics_port_ >= 0) {
    auto tls = HttpTls::Create(MeshTls());
    if (!tls.ok()) return Fail(tls.status(), 2);
    metrics_tls = std::move(*tls);
  }
  auto started = MetricsServer::StartIfEnabled(host_, metrics_port_, std::move(registry), std::move(metrics_tls));
  if (!started.ok()) return Fail(started.status(), 1);
  std::unique_ptr<MetricsServer> metrics = std::move(*started);
  if (metrics && more_metrics) {
    if (std::shared_ptr<prometheus::Collectable> c = more_metrics()) metrics->Register(std::move(c));
  }
  const std::string address = HostPort(host_, port_);
  int port = 0;
  ServerLimits limits;
  limits.max_receive_bytes = max_message_mb_ > 0 ? max_message_mb_ << 20 : default_max_message_bytes_;
  limits.max_metadata_bytes = absl::GetFlag(FLAGS_max_metadata_kb) << 10;
  limits.max_streams_per_connection = absl::GetFlag(FLAGS_max_streams_per_connection);
  limits.max_connection_idle_ms = absl::GetFlag(FLAGS_max_connection_idle_s) * 1000;
  limits.min_ping_interval_ms = absl::GetFlag(FLAGS_min_ping_interval_s) * 1000;
  limits.on_unparsed = on_unparsed_;
  const int drain_grace_s = absl::GetFlag(FLAGS_drain_grace_s);
  if (drain_grace_s < 0 || drain_grace_s > 3600) return Fail("--drain-grace-s is 0 to 3600", 2);
  if (limits.max_metadata_bytes < 1024 || limits.max_streams_per_connection < 1 || limits.max_connection_idle_ms < 0 ||
      limits.min_ping_interval_ms < 0) {
    return Fail("--max-metadata-kb must be >= 1, --max-streams-per-connection >= 1, --max-connection-idle-s and "
                "--min-ping-interval-s >= 0",
                2);
  }
  std::unique_ptr<grpc::Server> server = StartServer(address, services, &port, limits);
  if (server == nullptr) return Fail("cannot listen on " + address, 1);
  if (grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService()) {
    for (const std::string& name : service_names_) health->SetServingStatus(name, true);
  }
  if (metrics) std::printf("metrics on %s\n", HostPort(host_, metrics->port()).c_str());
  std::printf("listening on %s\n", HostPort(host_, port).c_str());
  std::fflush(stdout);
  WaitForTerminationSignal();
  ShutdownGracefully(server.get(), in_flight, std::chrono::seconds(drain_grace_s));
  // The metrics endpoint's web server takes seconds to stop, and the
  // process is ending anyway.
  (void)metrics.release();
  return 0;
}

}  // namespace moemesh
