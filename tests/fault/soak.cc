// Soak: the mesh under mixed load with faults injected, for a given time,
// reporting what should stay flat. Not in CI (docs/OPERATIONS.md, "Soak").
//
// `moemesh up` (2 expert shards x 2 replicas, 2 routers, a kvcache service,
// --expert-timeout-ms 300) on the demo model; N client threads send
// requests without pause: greedy and sampled, 8 to 64 tokens, one in eight
// cancelled after a few tokens and one in eight with a deadline of 20 to
// 200 ms. Every --fault-s seconds one expert replica, at random, is stopped
// (SIGSTOP) for 3 s. Every --sample-s seconds a row: each process's
// resident memory, open files and threads, and the interval's completed
// requests and P50 / P99 of their times. At the end, each figure's first
// and last sample. Exit status 1 on any failure other than the deadlines
// and cancellations it asked for.
//
//   build/tests/soak [--minutes 60] [--streams 16] [--sample-s 60] [--fault-s 90]
//                    [--kvcache-capacity-mb 0 (the service's default)]
//                    [--model models/fortune-moe] [--moemesh $MOEMESH_BIN or build/tools/moemesh/moemesh]
#include <dirent.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "core/common/subprocess.h"
#include "moemesh/v1/gateway.grpc.pb.h"
#include "services/common/server_util.h"

namespace moemesh {
namespace {

// SIGINT or SIGTERM ends the run early, with its report, and stops the mesh.
std::atomic<bool> g_stop{false};
void OnStop(int) { g_stop = true; }

struct Process {
  std::string role;  // "router 0", "expert shard 1 replica 0", "gateway", ...
  int pid = 0;
};

struct Figures {
  double rss_mib = 0;
  int fds = 0, threads = 0;
};

int CountEntries(const std::string& dir) {
  int n = 0;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
    closedir(d);
  }
  return n;
}

Figures Measure(int pid) {
  Figures f;
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) f.rss_mib = std::stod(line.substr(6)) / 1024;
  }
  f.fds = CountEntries("/proc/" + std::to_string(pid) + "/fd");
  f.threads = CountEntries("/proc/" + std::to_string(pid) + "/task");
  return f;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

// The load: what the last interval completed, and what failed unexpectedly.
struct Load {
  std::mutex mu;
  std::vector<double> seconds;  // completed requests, this interval
  int64_t completed = 0, ended_early = 0;
  std::map<int, int64_t> unexpected;  // by gRPC code
};

void Client(v1::Gateway::Stub* gateway, int c, std::chrono::steady_clock::time_point end, Load* load) {
  std::mt19937 rng(static_cast<unsigned>(c) * 104729 + 7);
  while (std::chrono::steady_clock::now() < end && !g_stop) {
    v1::GenerateRequest r;
    for (int i = 0; i < 3 + static_cast<int>(rng() % 6); ++i) r.mutable_token_ids()->add_ids(1 + rng() % 200);
    r.set_max_tokens(8 + static_cast<int>(rng() % 57));
    r.set_ignore_eos(rng() % 2 == 0);
    if (rng() % 2) {
      r.mutable_sampling()->set_temperature(0);
    } else {
      r.mutable_sampling()->set_temperature(0.8f);
      r.mutable_sampling()->set_top_p(0.9f);
      r.mutable_sampling()->set_seed(rng());
    }
    const int kind = static_cast<int>(rng() % 8);  // 0: cancel, 1: deadline
    grpc::ClientContext ctx;
    if (kind == 1) ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(20 + rng() % 181));
    const int cancel_after = kind == 0 ? static_cast<int>(rng() % 4) : -1;
    const auto t0 = std::chrono::steady_clock::now();
    auto reader = gateway->Generate(&ctx, r);
    v1::GenerateResponse resp;
    for (int n = 0; reader->Read(&resp); ++n) {
      if (n == cancel_after) ctx.TryCancel();
    }
    const grpc::Status st = reader->Finish();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::lock_guard<std::mutex> lock(load->mu);
    if (st.ok()) {
      ++load->completed;
      if (kind > 1) load->seconds.push_back(s);
    } else if ((kind == 0 && st.error_code() == grpc::StatusCode::CANCELLED) ||
               (kind == 1 && st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)) {
      ++load->ended_early;
    } else {
      ++load->unexpected[st.error_code()];
      std::fprintf(stderr, "soak: unexpected %d: %s\n", st.error_code(), st.error_message().c_str());
    }
  }
}

int Run(int argc, char** argv) {
  std::string model = "models/fortune-moe", moemesh = "build/tools/moemesh/moemesh";
  if (const char* bin = std::getenv("MOEMESH_BIN")) moemesh = bin;
  double minutes = 60;
  int streams = 16, sample_s = 60, fault_s = 90, kvcache_mb = 0;
  for (int i = 1; i < argc; ++i) {
    const bool has = i + 1 < argc;
    if (!std::strcmp(argv[i], "--minutes") && has) minutes = std::atof(argv[++i]);
    else if (!std::strcmp(argv[i], "--streams") && has) streams = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--sample-s") && has) sample_s = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--fault-s") && has) fault_s = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--kvcache-capacity-mb") && has) kvcache_mb = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--model") && has) model = argv[++i];
    else if (!std::strcmp(argv[i], "--moemesh") && has) moemesh = argv[++i];
    else {
      std::fprintf(stderr, "usage: soak [--minutes 60] [--streams 16] [--sample-s 60] [--fault-s 90] "
                           "[--kvcache-capacity-mb N] [--model DIR] [--moemesh PATH]\n");
      return 2;
    }
  }
  if (minutes <= 0 || streams < 1 || sample_s < 1 || fault_s < 5 || kvcache_mb < 0) {
    std::fprintf(stderr, "soak: need --minutes > 0, --streams >= 1, --sample-s >= 1, --fault-s >= 5, "
                         "--kvcache-capacity-mb >= 0\n");
    return 2;
  }
  signal(SIGINT, OnStop);
  signal(SIGTERM, OnStop);
  auto up = Subprocess::Start({moemesh, "up", "--model=" + model, "--expert-shards=2", "--expert-replicas=2",
                               "--routers=2", "--expert-timeout-ms=300",
                               "--kvcache-capacity-mb=" + std::to_string(kvcache_mb)});
  if (!up.ok()) {
    std::fprintf(stderr, "soak: %s\n", std::string(up.status().message()).c_str());
    return 1;
  }
  auto target = (*up)->WaitForLine("gateway listening on ", absl::Seconds(180));
  if (!target.ok()) {
    std::fprintf(stderr, "soak: the mesh did not start: %s\n", std::string(target.status().message()).c_str());
    return 1;
  }
  std::vector<Process> processes, replicas;
  for (const std::string& line : (*up)->lines()) {  // "  ROLE on ADDR (pid P)"
    const size_t on = line.find(" on "), pid = line.find("(pid ");
    if (on == std::string::npos || pid == std::string::npos) continue;
    Process p{line.substr(2, on - 2), std::atoi(line.c_str() + pid + 5)};
    processes.push_back(p);
    if (p.role.rfind("expert", 0) == 0) replicas.push_back(p);
  }
  (*up)->ForwardOutput(2);
  auto gateway = v1::Gateway::NewStub(
      grpc::CreateCustomChannel(*target, grpc::InsecureChannelCredentials(), ClientChannelArguments()));
  std::printf("soak: %.0f min, %d streams, a replica stopped for 3 s every %d s, a sample every %d s\n", minutes,
              streams, fault_s, sample_s);
  std::printf("%6s %9s %6s %8s %8s", "min", "completed", "early", "P50 s", "P99 s");
  for (const Process& p : processes) std::printf("  %s: MiB/fds/threads", p.role.c_str());
  std::printf("\n");

  const auto start = std::chrono::steady_clock::now();
  const auto end = start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                               std::chrono::duration<double>(minutes * 60));
  Load load;
  std::vector<std::thread> clients;
  for (int c = 0; c < streams; ++c) clients.emplace_back(Client, gateway.get(), c, end, &load);
  std::atomic<bool> done{false};
  std::thread faults([&] {
    std::mt19937 rng(11);
    auto next = start + std::chrono::seconds(fault_s);
    while (!done) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      if (std::chrono::steady_clock::now() < next || replicas.empty()) continue;
      const Process& victim = replicas[rng() % replicas.size()];
      kill(victim.pid, SIGSTOP);
      std::this_thread::sleep_for(std::chrono::seconds(3));
      kill(victim.pid, SIGCONT);
      next += std::chrono::seconds(fault_s);
    }
  });
  std::vector<std::vector<Figures>> samples;
  std::vector<double> p99s;
  for (auto next = start + std::chrono::seconds(sample_s);; next += std::chrono::seconds(sample_s)) {
    while (!g_stop && std::chrono::steady_clock::now() < std::min(next, end)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    std::vector<double> seconds;
    int64_t completed, early;
    {
      std::lock_guard<std::mutex> lock(load.mu);
      seconds.swap(load.seconds);
      completed = load.completed;
      early = load.ended_early;
    }
    std::vector<Figures> row;
    const double p99 = Percentile(seconds, 0.99);
    std::printf("%6.1f %9lld %6lld %8.3f %8.3f",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / 60,
                static_cast<long long>(completed), static_cast<long long>(early), Percentile(seconds, 0.5), p99);
    for (const Process& p : processes) {
      row.push_back(Measure(p.pid));
      std::printf("  %.0f/%d/%d", row.back().rss_mib, row.back().fds, row.back().threads);
    }
    std::printf("\n");
    std::fflush(stdout);
    samples.push_back(row);
    p99s.push_back(p99);
    if (next >= end || g_stop) break;
  }
  for (auto& c : clients) c.join();
  done = true;
  faults.join();
  std::printf("first -> last sample:\n");
  std::printf("  P99 of a request: %.3f -> %.3f s\n", p99s.front(), p99s.back());
  for (size_t i = 0; i < processes.size(); ++i) {
    const Figures &a = samples.front()[i], &b = samples.back()[i];
    std::printf("  %-26s memory %.0f -> %.0f MiB, open files %d -> %d, threads %d -> %d\n", processes[i].role.c_str(),
                a.rss_mib, b.rss_mib, a.fds, b.fds, a.threads, b.threads);
  }
  int64_t unexpected = 0;
  for (const auto& [code, n] : load.unexpected) {
    std::printf("  unexpected failures with code %d: %lld\n", code, static_cast<long long>(n));
    unexpected += n;
  }
  std::printf("%lld requests completed, %lld ended early as asked, %lld failed otherwise\n",
              static_cast<long long>(load.completed), static_cast<long long>(load.ended_early),
              static_cast<long long>(unexpected));
  (*up)->Stop(absl::Seconds(30));
  return unexpected == 0 ? 0 : 1;
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) { return moemesh::Run(argc, argv); }
