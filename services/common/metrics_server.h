#ifndef MOEMESH_SERVICES_COMMON_METRICS_SERVER_H_
#define MOEMESH_SERVICES_COMMON_METRICS_SERVER_H_

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace prometheus {
class Collectable;
class Registry;
}  // namespace prometheus

namespace moemesh {

class HttpTls;
class ProcessCollector;

// Serves GET /metrics in the Prometheus text format on a port of its own:
// the metrics of `registry` plus the process's (CPU seconds, resident
// memory, start time; see ProcessCollector). Every moemesh service runs one
// (flag --metrics-port); with `tls` (the service's --tls-cert) over HTTPS
// with the certificate of its gRPC port, and where that asks for client
// certificates, scrapers must present one too.
class MetricsServer {
 public:
  // Listens on host:port (port 0 picks a free one). UNAVAILABLE when the
  // port cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& host, int port,
                                                             std::shared_ptr<prometheus::Registry> registry,
                                                             std::shared_ptr<HttpTls> tls = nullptr);
  // As Start, but null for a negative port (the endpoint turned off).
  static absl::StatusOr<std::unique_ptr<MetricsServer>> StartIfEnabled(
      const std::string& host, int port, std::shared_ptr<prometheus::Registry> registry,
      std::shared_ptr<HttpTls> tls = nullptr);
  ~MetricsServer();

  int port() const { return port_; }
  bool https() const { return tls_ != nullptr; }
  // Serves `c`'s metrics too (e.g. a GpuCollector).
  void Register(std::shared_ptr<prometheus::Collectable> c);

 private:
  MetricsServer() = default;
  // The text of every collectable's metrics.
  std::string Scrape();

  std::shared_ptr<HttpTls> tls_;  // the server's callbacks use it
  std::mutex mu_;                 // guards collectables_
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  std::atomic<bool> listened_{false};  // the listening loop is over
  int port_ = 0;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_COMMON_METRICS_SERVER_H_
