#ifndef MOEMESH_CORE_METRICS_METRICS_SERVER_H_
#define MOEMESH_CORE_METRICS_METRICS_SERVER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace prometheus {
class Collectable;
class Exposer;
class Registry;
}  // namespace prometheus

namespace moemesh {

class ProcessCollector;

// Serves GET /metrics in the Prometheus text format on a port of its own:
// the metrics of `registry` plus the process's (CPU seconds, resident
// memory, start time; see ProcessCollector). Every moemesh service runs one
// (flag --metrics-port).
class MetricsServer {
 public:
  // Listens on host:port (port 0 picks a free one). UNAVAILABLE when the
  // port cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& host, int port,
                                                             std::shared_ptr<prometheus::Registry> registry);
  // As Start, but null for a negative port (the endpoint turned off).
  static absl::StatusOr<std::unique_ptr<MetricsServer>> StartIfEnabled(
      const std::string& host, int port, std::shared_ptr<prometheus::Registry> registry);
  ~MetricsServer();

  int port() const { return port_; }
  // Serves `c`'s metrics too (e.g. a GpuCollector).
  void Register(std::shared_ptr<prometheus::Collectable> c);

 private:
  MetricsServer() = default;

  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<ProcessCollector> process_;
  std::vector<std::shared_ptr<prometheus::Collectable>> extra_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_METRICS_METRICS_SERVER_H_
