#include "core/metrics/metrics_server.h"

#include <exception>

#include "absl/strings/str_cat.h"
#include "core/metrics/process_collector.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"

namespace moemesh {

MetricsServer::~MetricsServer() = default;

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::StartIfEnabled(
    const std::string& host, int port, std::shared_ptr<prometheus::Registry> registry) {
  if (port < 0) return std::unique_ptr<MetricsServer>();
  return Start(host, port, std::move(registry));
}

void MetricsServer::Register(std::shared_ptr<prometheus::Collectable> c) {
  exposer_->RegisterCollectable(c);
  extra_.push_back(std::move(c));  // the exposer holds a weak pointer
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& host, int port,
                                                                   std::shared_ptr<prometheus::Registry> registry) {
  std::unique_ptr<MetricsServer> s(new MetricsServer);
  s->registry_ = std::move(registry);
  s->process_ = std::make_shared<ProcessCollector>();
  try {
    s->exposer_ = std::make_unique<prometheus::Exposer>(absl::StrCat(host, ":", port), /*num_threads=*/2);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", host, ":", port, ": ", e.what()));
  }
  s->exposer_->RegisterCollectable(s->registry_);
  s->exposer_->RegisterCollectable(s->process_);
  std::vector<int> ports = s->exposer_->GetListeningPorts();
  if (ports.empty()) return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", host, ":", port));
  s->port_ = ports[0];
  return s;
}

}  // namespace moemesh
