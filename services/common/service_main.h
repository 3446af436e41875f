#ifndef MOEMESH_SERVICES_COMMON_SERVICE_MAIN_H_
#define MOEMESH_SERVICES_COMMON_SERVICE_MAIN_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace grpc {
class Service;
}  // namespace grpc

namespace prometheus {
class Collectable;
class Registry;
}  // namespace prometheus

namespace moemesh {

// The skeleton of every service's main.cc (moemesh-gateway, moemesh-router,
// moemesh-expert). A main
//   1. constructs a ServiceMain first thing: it blocks SIGINT and SIGTERM in
//      this and every later thread (Serve takes them) and parses the flags,
//      which may be written with dashes: the service's own, defined in its
//      main.cc, and those every service has, defined in service_main.cc:
//      --host, --port and --metrics-port;
//   2. fills its Options from its flags and calls Validate();
//   3. builds its objects;
//   4. returns Serve(...) with its gRPC services, its metrics registry and
//      the count of the calls that a shutdown lets finish.
//
//   int main(int argc, char** argv) {
//     moemesh::ServiceMain service_main("moemesh-foo", argc, argv, "moemesh-foo --model DIR [--port P]");
//     const Options options = Options::FromFlags();
//     if (absl::Status st = options.Validate(); !st.ok()) return service_main.Fail(st, 2);
//     ...
//     return service_main.Serve({&service}, registry, [&] { return service.busy(); });
//   }
class ServiceMain {
 public:
  // `name` ("moemesh-expert") starts the service's error lines; `usage` is
  // the first line of --help.
  ServiceMain(std::string name, int argc, char** argv, const char* usage);

  // --host: the address every port of the service listens on.
  const std::string& host() const { return host_; }
  // The largest message Serve accepts unless --max-message-mb says
  // otherwise (kMaxMessageBytes by default).
  void set_default_max_message_bytes(int bytes) { default_max_message_bytes_ = bytes; }
  // The full names of the gRPC services Serve will serve
  // ("moemesh.v1.Gateway"): health checks answer for each by name too.
  void set_service_names(std::vector<std::string> names) { service_names_ = std::move(names); }

  // Prints "NAME: error: MESSAGE" on stderr and returns `exit_code`: 2 for
  // bad flags or model files, 1 when the service cannot start.
  int Fail(absl::string_view message, int exit_code) const;
  int Fail(const absl::Status& status, int exit_code) const { return Fail(status.message(), exit_code); }
  // Prints "NAME: warning: MESSAGE" on stderr.
  void Warn(absl::string_view message) const;

  // Serves `services` (with health checking and reflection) on
  // --host:--port, and `registry` with the process's own metrics on
  // /metrics at --metrics-port (unless it is -1; over HTTPS with the gRPC
  // port's certificate and client-certificate rule under TLS); `more_metrics`, if given,
  // is called once that endpoint is up, and what it returns (may be null,
  // e.g. a GpuCollector) is served there too. Prints "metrics on HOST:PORT"
  // (when there is an endpoint), then "listening on HOST:PORT": the lines
  // `moemesh up` and the tests wait for. Then blocks until SIGINT or
  // SIGTERM, and stops the server: marks it NOT_SERVING for health checks,
  // lets the calls that `in_flight` counts finish for up to --drain-grace-s
  // (5 s by default), then shuts
  // it down at once (grpc::Server::Shutdown(deadline) alone would also wait
  // out the deadline for clients that merely keep an idle connection open).
  // Returns main's exit code: 0, or 1 (after Fail) when a port cannot be
  // bound.
  // Told of each request that could not be parsed (ServerLimits::on_unparsed).
  void set_on_unparsed(std::function<void(const std::string& method)> f) { on_unparsed_ = std::move(f); }

  int Serve(const std::vector<grpc::Service*>& services, std::shared_ptr<prometheus::Registry> registry,
            const std::function<int()>& in_flight,
            const std::function<std::shared_ptr<prometheus::Collectable>()>& more_metrics = nullptr) const;

 private:
  std::string name_;
  std::string host_;
  int port_ = 0;
  int metrics_port_ = 0;
  int max_message_mb_ = 0;
  int default_max_message_bytes_ = 512 << 20;  // kMaxMessageBytes (server_util.h)
  std::vector<std::string> service_names_;
  std::function<void(const std::string&)> on_unparsed_;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_COMMON_SERVICE_MAIN_H_
