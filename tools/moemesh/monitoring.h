#ifndef MOEMESH_TOOLS_MOEMESH_MONITORING_H_
#define MOEMESH_TOOLS_MOEMESH_MONITORING_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/common/subprocess.h"

namespace moemesh {

// A Prometheus server for a local mesh (`moemesh up --monitoring`): runs
// Debian's `prometheus` on deploy/prometheus/prometheus.yml and its rules,
// copied into a directory of its own with the scrape interval set and the
// target files written, and removes that directory when destroyed.
class LocalPrometheus {
 public:
  struct Options {
    std::string host = "127.0.0.1";
    int port = 0;               // 0 picks a free one
    int scrape_interval_s = 5;  // also the rule evaluation interval
    std::string binary;         // empty: `prometheus` on PATH
    std::string deploy_dir;     // empty: deploy/prometheus, found as the demo model is
  };
  // `targets` maps a service kind ("gateway", "router", "expert") to the
  // HOST:PORT of each /metrics endpoint. Waits until Prometheus is ready.
  static absl::StatusOr<std::unique_ptr<LocalPrometheus>> Start(
      const Options& options, const std::map<std::string, std::vector<std::string>>& targets);
  ~LocalPrometheus();

  const std::string& address() const { return address_; }  // HOST:PORT
  Subprocess* process() { return process_.get(); }

 private:
  LocalPrometheus() = default;
  std::unique_ptr<Subprocess> process_;
  std::string address_;
  std::string dir_;
};

// `rel` (a path inside the source tree) under the working directory or
// under a parent of this executable's directory; empty if not found.
std::string FindSourcePath(const std::string& rel);

}  // namespace moemesh

#endif  // MOEMESH_TOOLS_MOEMESH_MONITORING_H_
