#include "tools/moemesh/up.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/common/status_macros.h"
#include "core/common/subprocess.h"
#include "core/experts/placement.h"
#include "core/kv/kv_dtype.h"
#include "core/model/config.h"
#include "core/quant/quantize.h"
#include "services/common/device_flag.h"
#include "services/expert_client/remote_expert_executor.h"
#include "tools/moemesh/monitoring.h"
#include "tools/moemesh/progress.h"

namespace moemesh {
namespace {

namespace fs = std::filesystem;

fs::path ExeDir() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path() : exe.parent_path();
}

struct Service {
  std::string role;   // "expert shard 0 replica 1", "router 0", "gateway"
  std::string group;  // services that stand in for each other: "shard 0", "routers", "gateway"
  std::unique_ptr<Subprocess> process;
  std::string address;
  std::string metrics;    // its /metrics endpoint, HOST:PORT
  bool reported = false;  // its exit has been announced
  bool essential = true;  // the mesh stops when its whole group is gone
};

struct Spec {
  std::string role, group;
  std::vector<std::string> argv;
  bool essential = true;
};

// How far the start of the mesh has come.
struct Startup {
  StatusLine* status;
  int ready = 0;
  int total = 0;
  absl::Time start = absl::Now();
};

// Waits for a service's "listening on HOST:PORT" line and returns the
// address. On a terminal the status line says whom it waits for.
absl::StatusOr<std::string> WaitUntilListening(Service& s, absl::Duration timeout, bool terminal, Startup* startup) {
  constexpr char kListening[] = "listening on ";
  if (!terminal) return s.process->WaitForLine(kListening, timeout);
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    startup->status->Set(absl::StrCat("moemesh up: waiting for ", s.role, " (", startup->ready, " of ", startup->total,
                                      " services ready, ", absl::ToInt64Seconds(absl::Now() - startup->start), "s)"));
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(absl::StrCat(s.process->name(), " did not print \"", kListening, "\" within ",
                                                      absl::FormatDuration(timeout)));
    }
    absl::StatusOr<std::string> addr = s.process->WaitForLine(kListening, std::min(left, absl::Milliseconds(500)));
    if (!absl::IsDeadlineExceeded(addr.status())) return addr;
  }
}

// Starts every process of a tier, then waits for each to listen, printing
// "  ROLE on ADDRESS (pid N)" as it does.
// `moemesh up --insecure`: the services may serve plaintext on a host other
// than loopback.
void AllowPlaintext(const UpCommand& cmd, std::vector<Spec>* specs) {
  if (!cmd.insecure) return;
  for (Spec& s : *specs) s.argv.push_back("--insecure");
}

absl::Status StartTier(const std::vector<Spec>& specs, const std::string& what, absl::Duration timeout, bool terminal,
                       Startup* startup, std::vector<Service>* tier) {
  startup->status->Print(absl::StrCat("moemesh up: starting ", what));
  for (const Spec& s : specs) {
    MM_ASSIGN_OR_RETURN(std::unique_ptr<Subprocess> p, Subprocess::Start(s.argv));
    tier->push_back({s.role, s.group, std::move(p), "", "", false, s.essential});
  }
  for (Service& s : *tier) {
    absl::StatusOr<std::string> addr = WaitUntilListening(s, timeout, terminal, startup);
    if (!addr.ok()) return absl::Status(addr.status().code(), absl::StrCat(s.role, ": ", addr.status().message()));
    s.address = *addr;
    std::vector<std::string> transports;  // a router's, per expert shard, and its KV cache
    for (const std::string& line : s.process->lines()) {
      if (line.rfind("metrics on ", 0) == 0) s.metrics = line.substr(11);
      if (line.rfind("expert shard ", 0) == 0 || line.rfind("KV cache: ", 0) == 0) transports.push_back(line);
    }
    s.process->ForwardOutput(2);
    ++startup->ready;
    startup->status->Print(absl::StrCat("  ", s.role, " on ", s.address, " (pid ", s.process->pid(), ")"));
    for (const std::string& t : transports) startup->status->Print(absl::StrCat("    ", t));
  }
  return absl::OkStatus();
}

// Blocks until SIGINT/SIGTERM (OK), or until a group has lost every
// member (UNAVAILABLE): the mesh survives an expert replica or a router
// whose group still has a live member, since the router and the gateway
// fail over to them.
absl::Status Supervise(const std::vector<std::vector<Service>*>& tiers, std::ostream& out) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  for (;;) {
    timespec wait{0, 200 * 1000 * 1000};
    if (sigtimedwait(&set, nullptr, &wait) > 0) return absl::OkStatus();
    std::map<std::string, int> alive;
    for (auto* tier : tiers) {
      for (Service& s : *tier) {
        const int st = s.process->Poll();
        if (s.essential) alive[s.group] += st < 0;
        if (st >= 0 && !s.reported) {
          s.reported = true;
          out << "moemesh up: " << s.role << " (pid " << s.process->pid() << ") exited with status " << st
              << std::endl;
        }
      }
    }
    for (const auto& [group, n] : alive) {
      if (n == 0) return absl::UnavailableError(absl::StrCat("no live ", group, " is left; stopping the mesh"));
    }
  }
}

}  // namespace

std::string FindDefaultModel() {
  const fs::path rel = fs::path("models") / "fortune-moe";
  if (fs::exists(rel / "config.json")) return rel.string();
  for (fs::path d = ExeDir(); !d.empty() && d != d.root_path(); d = d.parent_path()) {
    if (fs::exists(d / rel / "config.json")) return (d / rel).string();
  }
  return "";
}

absl::StatusOr<std::string> FindServiceBinary(const std::string& name, const std::string& bin_dir) {
  std::vector<fs::path> candidates;
  if (!bin_dir.empty()) {
    candidates.push_back(fs::path(bin_dir) / name);
  } else {
    const fs::path exe = ExeDir();
    const std::string kind = name.substr(name.find('-') + 1);  // "router"
    candidates.push_back(exe / name);                                  // installed together
    candidates.push_back(exe / ".." / ".." / "services" / kind / name);  // CMake and Bazel trees
  }
  for (const fs::path& p : candidates) {
    if (access(p.c_str(), X_OK) == 0) return fs::weakly_canonical(p).string();
  }
  std::vector<std::string> tried;
  for (const fs::path& p : candidates) tried.push_back(p.string());
  return absl::NotFoundError(absl::StrCat("cannot find ", name, " (looked at ", absl::StrJoin(tried, ", "),
                                          "); build it or give --bin-dir"));
}

absl::Status RunUp(const UpCommand& cmd, std::ostream& out) {
  if (cmd.expert_shards < 0 || cmd.expert_replicas < 1 || cmd.routers < 1 || cmd.threads < 1 ||
      cmd.kvcache_replicas < 1 || cmd.kvcache_capacity_mb < 0) {
    return absl::InvalidArgumentError(
        "need --expert-shards >= 0, --expert-replicas >= 1, --routers >= 1, --threads >= 1, "
        "--kvcache-replicas >= 1 and --kvcache-capacity-mb >= 0");
  }
  if (cmd.micro_batches != 1 && (cmd.micro_batches != 2 || cmd.expert_shards == 0)) {
    return absl::InvalidArgumentError("--micro-batches must be 1, or 2 with --expert-shards > 0");
  }
  if (absl::Status st = RemoteExpertExecutor::ParseRows(cmd.expert_rows).status(); !st.ok()) return st;
  if (absl::Status st = RemoteExpertExecutor::ParseAnswers(cmd.expert_answers).status(); !st.ok()) return st;
  if ((cmd.expert_rows != "auto" || cmd.expert_answers != "f32") && cmd.expert_shards == 0) {
    return absl::InvalidArgumentError(
        "--expert-rows and --expert-answers need --expert-shards > 0 (without workers no rows travel)");
  }
  // Checked here rather than by each service at start: one clear error.
  if (absl::StatusOr<QuantSpec> q = ParseQuantSpec(cmd.quantize); !q.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--quantize: ", q.status().message()));
  } else if (q->kind != QuantKind::kNone &&
             ParseDeviceFlag(cmd.expert_shards > 0 ? cmd.expert_device : cmd.router_device).value_or(-1) >= 0) {
    return absl::InvalidArgumentError("--quantize " + cmd.quantize + ": quantized experts run on the CPU for now (" +
                                      (cmd.expert_shards > 0 ? "--expert-device" : "--router-device") + " cpu)");
  }
  const bool cpu_routers = ParseDeviceFlag(cmd.router_device).value_or(-1) < 0;
  const bool cpu_workers = cmd.expert_shards > 0 && ParseDeviceFlag(cmd.expert_device).value_or(-1) < 0;
  if (cmd.bf16_inputs && !cpu_routers && !cpu_workers) {
    return absl::InvalidArgumentError("--bf16-inputs: no service runs on the CPU (the GPU's products take bf16 "
                                      "inputs already)");
  }
  if (absl::Status st =
          ParseKvCacheDType(cmd.kv_cache_dtype, ParseDeviceFlag(cmd.router_device).value_or(-1) >= 0).status();
      !st.ok()) {
    return st;
  }
  std::string model = cmd.model_dir.empty() ? FindDefaultModel() : cmd.model_dir;
  if (model.empty()) return absl::InvalidArgumentError("no --model DIR given and the demo model was not found");
  if (!fs::exists(fs::path(model) / "config.json")) {
    return absl::InvalidArgumentError(absl::StrCat("--model ", model, ": no config.json there"));
  }
  int num_shards = cmd.expert_shards;
  if (!cmd.placement.empty()) {
    MM_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model));
    MM_ASSIGN_OR_RETURN(ShardPlacement p, ShardPlacement::Load(cmd.placement, config.num_layers, config.num_experts));
    num_shards = p.num_shards();
  }
  MM_ASSIGN_OR_RETURN(std::string expert_bin, FindServiceBinary("moemesh-expert", cmd.bin_dir));
  MM_ASSIGN_OR_RETURN(std::string router_bin, FindServiceBinary("moemesh-router", cmd.bin_dir));
  MM_ASSIGN_OR_RETURN(std::string gateway_bin, FindServiceBinary("moemesh-gateway", cmd.bin_dir));
  std::string kvcache_bin;
  if (cmd.kvcache) {
    MM_ASSIGN_OR_RETURN(kvcache_bin, FindServiceBinary("moemesh-kvcache", cmd.bin_dir));
  }
  const std::string threads = absl::StrCat("--threads=", cmd.threads);
  const std::string host = absl::StrCat("--host=", cmd.host);

  // The kvcache service's folder: given, or made here and removed at exit.
  std::string kv_dir = cmd.kv_dir;
  std::string temp_kv_dir;
  if (cmd.kvcache && kv_dir.empty()) {
    std::string pattern = (fs::temp_directory_path() / "moemesh-kv-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) return absl::InternalError("cannot make a temporary folder for the kvcache");
    kv_dir = temp_kv_dir = pattern;
  }

  // Tiers stop in reverse order of start: gateway, routers, experts, kvcache.
  std::vector<Service> kvcache, experts, routers, gateway;
  auto stop_all = [&] {
    for (auto* tier : {&gateway, &routers, &experts, &kvcache}) {
      // Longer than a service's own 5 s drain, which must not race a SIGKILL.
      for (Service& s : *tier) s.process->Stop(absl::Seconds(10));
    }
    if (!temp_kv_dir.empty()) {
      std::error_code ec;
      fs::remove_all(temp_kv_dir, ec);
    }
  };
  // Expert workers on the router's GPU: without MPS the processes take
  // turns on it, and every expert hop costs two context switches.
  const absl::StatusOr<int> router_gpu = ParseDeviceFlag(cmd.router_device),
                            expert_gpu = ParseDeviceFlag(cmd.expert_device);
  if (num_shards > 0 && router_gpu.ok() && expert_gpu.ok() && *router_gpu >= 0 && *router_gpu == *expert_gpu &&
      !MpsDaemonRunning()) {
    out << "moemesh up: warning: the router and the expert workers share GPU " << *router_gpu
        << " without the CUDA MPS daemon: each expert hop will cost ~0.35 ms of context switches. Start it first "
           "(nvidia-cuda-mps-control -d; docs/OPERATIONS.md), or run the experts in the router (--expert-shards 0)"
        << std::endl;
  }
  out << "moemesh up: model " << model << ", " << num_shards << " expert shard(s) x " << cmd.expert_replicas
      << " replica(s), " << cmd.routers << " router(s)" << (cmd.kvcache ? ", a kvcache service in " + kv_dir : "")
      << std::endl;
  StatusLine status(ProgressOutput{&out, cmd.terminal, cmd.columns});
  Startup startup{&status};
  startup.total = num_shards * cmd.expert_replicas + cmd.routers + 1 + (cmd.kvcache ? cmd.kvcache_replicas : 0);

  absl::Status st = absl::OkStatus();
  std::vector<Spec> specs;
  if (cmd.kvcache) {
    for (int r = 0; r < cmd.kvcache_replicas; ++r) {
      const std::string dir = cmd.kvcache_replicas == 1 ? kv_dir : absl::StrCat(kv_dir, "/replica-", r);
      std::error_code ec;
      fs::create_directories(dir, ec);  // RocksDB makes only the last level
      std::vector<std::string> argv = {kvcache_bin, "--dir=" + dir, host, "--port=0"};
      if (cmd.kvcache_capacity_mb > 0) argv.push_back(absl::StrCat("--capacity-mb=", cmd.kvcache_capacity_mb));
      specs.push_back({cmd.kvcache_replicas == 1 ? "kvcache" : absl::StrCat("kvcache replica ", r), "kvcache",
                       std::move(argv), /*essential=*/false});
    }
    AllowPlaintext(cmd, &specs);
    st = StartTier(specs, "the kvcache service", cmd.start_timeout, cmd.terminal, &startup, &kvcache);
    specs.clear();
  }
  std::vector<std::string> placement_flag;
  if (!cmd.placement.empty()) placement_flag.push_back("--placement=" + cmd.placement);
  for (int s = 0; s < num_shards; ++s) {
    for (int r = 0; r < cmd.expert_replicas; ++r) {
      specs.push_back({absl::StrCat("expert shard ", s, " replica ", r), absl::StrCat("expert shard ", s),
                       {expert_bin, "--model=" + model, absl::StrCat("--shard-index=", s),
                        absl::StrCat("--num-shards=", num_shards), host, "--port=0", threads,
                        "--device=" + cmd.expert_device}});
      specs.back().argv.insert(specs.back().argv.end(), placement_flag.begin(), placement_flag.end());
      if (cmd.quantize != "none") specs.back().argv.push_back("--quantize=" + cmd.quantize);
      if (cmd.bf16_inputs && cpu_workers) specs.back().argv.push_back("--bf16-inputs");
    }
  }
  if (!specs.empty() && st.ok()) {
    AllowPlaintext(cmd, &specs);
    st = StartTier(specs, absl::StrCat(specs.size(), " expert worker(s)"), cmd.start_timeout, cmd.terminal, &startup,
                   &experts);
  }
  std::vector<std::string> kv_list;
  for (const Service& s : kvcache) kv_list.push_back(s.address);
  const std::string kvcache_addrs = absl::StrJoin(kv_list, ",");
  std::vector<std::string> shard_addrs(num_shards);
  for (int i = 0; i < static_cast<int>(experts.size()) && st.ok(); ++i) {
    std::string& a = shard_addrs[i / cmd.expert_replicas];
    a += (a.empty() ? "" : "|") + experts[i].address;
  }
  if (st.ok()) {
    specs.clear();
    for (int r = 0; r < cmd.routers; ++r) {
      std::vector<std::string> argv = {router_bin, "--model=" + model, host, "--port=0", threads,
                                       absl::StrCat("--kv-cache-tokens=", cmd.kv_cache_tokens),
                                       "--kv-cache-dtype=" + cmd.kv_cache_dtype,
                                       absl::StrCat("--max-running=", cmd.max_running),
                                       absl::StrCat("--max-waiting=", cmd.max_waiting),
                                       "--device=" + cmd.router_device};
      if (!kvcache.empty()) argv.push_back("--kvcache=" + kvcache_addrs);
      if (cmd.bf16_inputs && cpu_routers) argv.push_back("--bf16-inputs");
      if (!shard_addrs.empty()) {
        argv.push_back("--experts=" + absl::StrJoin(shard_addrs, ","));
        argv.insert(argv.end(), placement_flag.begin(), placement_flag.end());
        if (cmd.expert_timeout_ms > 0) argv.push_back(absl::StrCat("--expert-timeout-ms=", cmd.expert_timeout_ms));
        if (cmd.expert_hedge_ms > 0) argv.push_back(absl::StrCat("--expert-hedge-ms=", cmd.expert_hedge_ms));
        if (cmd.micro_batches != 1) argv.push_back(absl::StrCat("--micro-batches=", cmd.micro_batches));
        if (cmd.expert_rows != "auto") argv.push_back("--expert-rows=" + cmd.expert_rows);
        if (cmd.expert_answers != "f32") argv.push_back("--expert-answers=" + cmd.expert_answers);
      } else if (cmd.quantize != "none") {
        argv.push_back("--quantize=" + cmd.quantize);  // the experts are the routers'
      }
      specs.push_back({absl::StrCat("router ", r), "router", argv});
    }
    AllowPlaintext(cmd, &specs);
    st = StartTier(specs, absl::StrCat(specs.size(), " router(s)"), cmd.start_timeout, cmd.terminal, &startup,
                   &routers);
  }
  if (st.ok()) {
    std::vector<std::string> router_addrs;
    for (const Service& s : routers) router_addrs.push_back(s.address);
    specs = {{"gateway", "gateway",
              {gateway_bin, "--model=" + model, "--routers=" + absl::StrJoin(router_addrs, ","), host,
               absl::StrCat("--port=", cmd.port)}}};
    if (!kvcache.empty()) specs[0].argv.push_back("--kvcache=" + kvcache_addrs);
    specs[0].argv.push_back(absl::StrCat("--http-port=", cmd.http_port));
    if (!cmd.chat_template.empty()) specs[0].argv.push_back("--chat-template=" + cmd.chat_template);
    if (!cmd.api_keys.empty()) specs[0].argv.push_back("--api-keys=" + cmd.api_keys);
    AllowPlaintext(cmd, &specs);
    st = StartTier(specs, "the gateway", cmd.start_timeout, cmd.terminal, &startup, &gateway);
  }
  status.Clear();
  if (!st.ok()) {
    stop_all();
    return st;
  }
  for (auto* tier : {&kvcache, &experts, &routers, &gateway}) {
    for (const Service& s : *tier) {
      if (!s.metrics.empty()) out << "  metrics of " << s.role << " at http://" << s.metrics << "/metrics" << std::endl;
    }
  }
  std::unique_ptr<LocalPrometheus> prometheus;
  if (cmd.monitoring) {
    std::map<std::string, std::vector<std::string>> targets;
    for (auto [tier, kind] : {std::pair{&kvcache, "kvcache"}, {&experts, "expert"}, {&routers, "router"},
                              {&gateway, "gateway"}}) {
      for (const Service& s : *tier) {
        if (!s.metrics.empty()) targets[kind].push_back(s.metrics);
      }
    }
    LocalPrometheus::Options po;
    po.host = cmd.host;
    po.port = cmd.prometheus_port;
    po.scrape_interval_s = cmd.scrape_interval_s;
    auto p = LocalPrometheus::Start(po, targets);
    if (!p.ok()) {
      stop_all();
      return p.status();
    }
    prometheus = std::move(*p);
    out << "  prometheus at http://" << prometheus->address() << " (rules and alerts of deploy/prometheus)"
        << std::endl;
  }
  for (const std::string& line : gateway[0].process->lines()) {
    for (const char* scheme : {"http", "https"}) {
      const std::string said = absl::StrCat(scheme, " on ");
      if (line.rfind(said, 0) == 0) {
        out << "  OpenAI-compatible HTTP API at " << scheme << "://" << line.substr(said.size()) << "/v1" << std::endl;
      }
    }
  }
  out << "gateway listening on " << gateway[0].address << std::endl;
  st = Supervise({&gateway, &routers, &experts, &kvcache}, out);
  out << "moemesh up: stopping" << std::endl;
  stop_all();
  return st;
}

}  // namespace moemesh
