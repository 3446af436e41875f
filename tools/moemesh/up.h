#ifndef MOEMESH_TOOLS_MOEMESH_UP_H_
#define MOEMESH_TOOLS_MOEMESH_UP_H_

#include <ostream>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace moemesh {

// `moemesh up`: a whole mesh as local processes on free loopback ports.
struct UpCommand {
  std::string model_dir;      // empty: the bundled demo model (FindDefaultModel)
  int expert_shards = 2;      // 0 runs the experts inside the routers
  std::string placement;      // placement file for workers and routers (sets the shard count)
  int expert_replicas = 1;    // per shard
  int routers = 1;
  std::string host = "127.0.0.1";
  bool insecure = false;      // plaintext on a host other than loopback
  int port = 0;               // the gateway's; 0 picks a free one
  int http_port = -1;         // the gateway's HTTP API; 0 picks a free one, -1 none
  std::string chat_template;  // the gateway's --chat-template; empty: the model's own
  std::string api_keys;       // the gateway's --api-keys; empty: none needed
  int threads = 1;            // per process
  std::string expert_device = "cpu";  // moemesh-expert --device: cpu, cuda, cuda:N
  std::string router_device = "cpu";  // moemesh-router --device: cpu, cuda, cuda:N
  std::string quantize = "none";      // the experts' --quantize (workers', or the routers' with no shards)
  bool bf16_inputs = false;           // --bf16-inputs to every service on the CPU
  int kv_cache_tokens = 65536;  // per router
  std::string kv_cache_dtype = "auto";  // the routers' --kv-cache-dtype
  int max_running = 64;         // per router
  int max_waiting = 256;        // per router
  int expert_timeout_ms = 0;    // the routers' --expert-timeout-ms; 0: wait forever
  int expert_hedge_ms = 0;      // the routers' --expert-hedge-ms; 0: never
  std::string expert_rows = "auto";  // the routers' --expert-rows (with expert shards)
  std::string expert_answers = "f32";  // the routers' --expert-answers (with expert shards)
  int micro_batches = 1;        // the routers' --micro-batches (with expert shards)
  std::string bin_dir;        // empty: beside this executable (FindServiceBinary)
  // A kvcache service below the routers' caches (its loss costs recompute,
  // never the mesh): in `kv_dir`, or in a temporary folder removed at exit.
  bool kvcache = true;
  int kvcache_replicas = 1;  // sequences and sessions spread over them by hashing
  int kvcache_capacity_mb = 0;  // each kvcache service's --capacity-mb; 0: the service's default
  std::string kv_dir;
  bool monitoring = false;    // also run a local Prometheus scraping the mesh
  int prometheus_port = 0;    // 0 picks a free one
  int scrape_interval_s = 5;
  absl::Duration start_timeout = absl::Seconds(120);
  // `out` is a terminal `columns` wide: while the services start, a status
  // line there says which one is awaited (ProgressOn(1) tells).
  bool terminal = false;
  int columns = 80;
};

// Starts the kvcache service, expert workers, then routers, then the gateway, each waiting for
// the previous to listen, and prints to `out` a line per service as it
// becomes ready ("  router 0 on HOST:PORT (pid N)"), then where each
// exports metrics (and, with monitoring, a Prometheus scraping them all,
// "prometheus at http://HOST:PORT"), and last "gateway listening on
// HOST:PORT";
// then runs until SIGINT or SIGTERM (OK) or until the gateway, every
// router or every replica of an expert shard has died (UNAVAILABLE), and
// stops everything, gateway first. A lone death is reported and tolerated:
// routers retry on other replicas, the gateway on other routers. The calling thread
// must have SIGINT and SIGTERM blocked (CliMain does).
absl::Status RunUp(const UpCommand& cmd, std::ostream& out);

// The demo model: models/fortune-moe under the working directory or under
// a parent of this executable's directory.
std::string FindDefaultModel();
// Path of a service binary ("moemesh-router"): in `bin_dir` if given, else
// beside this executable or in the build tree's services/<kind>/.
absl::StatusOr<std::string> FindServiceBinary(const std::string& name, const std::string& bin_dir);

}  // namespace moemesh

#endif  // MOEMESH_TOOLS_MOEMESH_UP_H_
