#include "services/common/metrics_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <chrono>

#include "absl/strings/str_cat.h"
#include "core/metrics/process_collector.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "services/common/http_tls.h"

namespace moemesh {

MetricsServer::~MetricsServer() {
  // cpp-httplib's stop() does nothing until the listening loop has begun:
  // asked again until the loop is over.
  while (thread_.joinable() && !listened_.load()) {
    server_->stop();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (thread_.joinable()) thread_.join();
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::StartIfEnabled(
    const std::string& host, int port, std::shared_ptr<prometheus::Registry> registry, std::shared_ptr<HttpTls> tls) {
  if (port < 0) return std::unique_ptr<MetricsServer>();
  return Start(host, port, std::move(registry), std::move(tls));
}

void MetricsServer::Register(std::shared_ptr<prometheus::Collectable> c) {
  std::lock_guard<std::mutex> lock(mu_);
  collectables_.push_back(std::move(c));
}

std::string MetricsServer::Scrape() {
  std::vector<prometheus::MetricFamily> families;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& c : collectables_) {
      std::vector<prometheus::MetricFamily> f = c->Collect();
      families.insert(families.end(), std::make_move_iterator(f.begin()), std::make_move_iterator(f.end()));
    }
  }
  return prometheus::TextSerializer().Serialize(families);
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& host, int port,
                                                                   std::shared_ptr<prometheus::Registry> registry,
                                                                   std::shared_ptr<HttpTls> tls) {
  std::unique_ptr<MetricsServer> s(new MetricsServer);
  s->collectables_ = {std::move(registry), std::make_shared<ProcessCollector>()};
  s->tls_ = std::move(tls);
  if (HttpTls* t = s->tls_.get()) {
    s->server_ = std::make_unique<httplib::SSLServer>([t](SSL_CTX& ctx) { return t->SetUp(&ctx); });
  } else {
    s->server_ = std::make_unique<httplib::Server>();
  }
  if (!s->server_->is_valid()) return absl::InternalError("cannot set the metrics server's TLS up");
  MetricsServer* self = s.get();
  s->server_->Get("/metrics", [self](const httplib::Request&, httplib::Response& res) {
    res.set_content(self->Scrape(), "text/plain; version=0.0.4; charset=utf-8");
  });
  // Scrapes are few: two threads, and a client that stalls is let go.
  s->server_->new_task_queue = [] { return new httplib::ThreadPool(2); };
  // Not cpp-httplib's default SO_REUSEPORT: a second service given the same
  // port must fail, not take half the scrapes.
  s->server_->set_socket_options([](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  s->server_->set_read_timeout(10);
  s->server_->set_write_timeout(10);
  // A bracketed IPv6 literal binds without its brackets.
  std::string bind = host;
  if (bind.size() > 2 && bind.front() == '[' && bind.back() == ']') bind = bind.substr(1, bind.size() - 2);
  const bool bound = port == 0 ? (s->port_ = s->server_->bind_to_any_port(bind)) > 0
                               : (s->server_->bind_to_port(bind, port) && (s->port_ = port) > 0);
  if (!bound) return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", host, ":", port));
  s->thread_ = std::thread([self] {
    self->server_->listen_after_bind();
    self->listened_ = true;
  });
  return s;
}

}  // namespace moemesh
