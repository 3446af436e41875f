// Decode throughput of the mesh against the single-process engine, same
// model, same load, same run. The load is N concurrent streams of T tokens
// each (ignore_eos, greedy), from prompts of a few tokens.
//   single process: the engine's continuous-batching loop (GenerationLoop)
//                   with --threads threads;
//   mesh:           `moemesh up` (gateway, one router, 2 expert shards, each
//                   process with --threads threads), N client streams over
//                   gRPC to the gateway;
//   ping-pong:      the same mesh with --micro-batches 2 (each step as two
//                   micro-batches, one's attention while the other's experts
//                   are away).
//
//   build/bench/mesh_bench [--model models/fortune-moe] [--streams 32] [--tokens 128]
//                          [--threads 1] [--rounds 5] [--moemesh $MOEMESH_BIN or build/tools/moemesh/moemesh]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/synchronization/notification.h"
#include "bench/mesh_load.h"
#include "core/common/subprocess.h"
#include "core/engine/engine.h"
#include "core/engine/generation_loop.h"
#include "core/engine/scheduler.h"
#include "moemesh/v1/gateway.grpc.pb.h"
#include "services/common/server_util.h"

namespace moemesh {
namespace {

using bench::Now;
using bench::Prompt;

// Tokens per second of the single-process engine.
double SingleProcess(const std::string& model, int streams, int tokens, int threads) {
  EngineOptions o;
  o.num_threads = threads;
  auto engine = Engine::Create(model, o);
  if (!engine.ok()) {
    std::fprintf(stderr, "mesh_bench: %s\n", std::string(engine.status().message()).c_str());
    std::exit(1);
  }
  GenerationLoop loop((*engine)->NewScheduler(streams, 2048), streams);
  std::vector<absl::Notification> done(streams);
  GenerateParams g;
  g.sampling.temperature = 0;  // greedy
  g.max_new_tokens = tokens;
  g.ignore_eos = true;
  const double t0 = Now();
  for (int i = 0; i < streams; ++i) {
    auto id = loop.Submit(Prompt(i), g, [&done, i](const StepEvent& ev) {
      if (ev.finished) done[i].Notify();
    });
    if (!id.ok()) std::exit(1);
  }
  for (auto& d : done) d.WaitForNotification();
  return static_cast<double>(streams) * tokens / (Now() - t0);
}

// A mesh started by `moemesh up` (gateway, one router, 2 expert shards).
class Mesh {
 public:
  Mesh(const std::string& moemesh, const std::string& model, int threads, int micro_batches) {
    auto up = Subprocess::Start({moemesh, "up", "--model=" + model, "--expert-shards=2", "--routers=1",
                                 "--threads=" + std::to_string(threads),
                                 "--micro-batches=" + std::to_string(micro_batches)});
    if (!up.ok()) Die(up.status());
    up_ = std::move(*up);
    auto target = up_->WaitForLine("gateway listening on ", absl::Seconds(120));
    if (!target.ok()) Die(target.status());
    up_->ForwardOutput(-1);
    stub_ = v1::Gateway::NewStub(
        grpc::CreateCustomChannel(*target, grpc::InsecureChannelCredentials(), ClientChannelArguments()));
    Stream(0, 4);  // connections up before any clock starts
  }
  ~Mesh() { up_->Stop(); }

  // Tokens per second of `streams` concurrent streams of `tokens` each.
  double Run(int streams, int tokens) {
    const double t0 = Now();
    std::vector<std::thread> clients;
    for (int i = 0; i < streams; ++i) clients.emplace_back([this, i, tokens] { Stream(i, tokens); });
    for (auto& c : clients) c.join();
    return static_cast<double>(streams) * tokens / (Now() - t0);
  }

 private:
  static void Die(const absl::Status& st) {
    std::fprintf(stderr, "mesh_bench: %s\n", std::string(st.message()).c_str());
    std::exit(1);
  }
  void Stream(int i, int n) {
    if (!bench::GreedyGrpcStream(stub_.get(), i, n)) Die(absl::InternalError("a stream failed"));
  }

  std::unique_ptr<Subprocess> up_;
  std::unique_ptr<v1::Gateway::Stub> stub_;
};

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) {
  std::string model = "models/fortune-moe", moemesh = "build/tools/moemesh/moemesh";
  if (const char* bin = std::getenv("MOEMESH_BIN")) moemesh = bin;  // as the GPU bundle lays it out
  int streams = 32, tokens = 128, threads = 1, rounds = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--model")) model = argv[i + 1];
    else if (!std::strcmp(argv[i], "--moemesh")) moemesh = argv[i + 1];
    else if (!std::strcmp(argv[i], "--streams")) streams = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--tokens")) tokens = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--rounds")) rounds = std::atoi(argv[i + 1]);
  }
  std::printf("model %s, %d streams x %d tokens, %d thread(s) per process\n", model.c_str(), streams, tokens,
              threads);
  // Rounds alternate between the two, so that both see the same machine;
  // the medians are compared.
  std::vector<double> single, mesh, ping_pong;
  {
    moemesh::Mesh m(moemesh, model, threads, 1), pp(moemesh, model, threads, 2);
    for (int r = 0; r < rounds; ++r) {
      single.push_back(moemesh::SingleProcess(model, streams, tokens, threads));
      mesh.push_back(m.Run(streams, tokens));
      ping_pong.push_back(pp.Run(streams, tokens));
      std::printf("round %d: single %.0f tokens/s, mesh %.0f tokens/s, ping-pong %.0f tokens/s\n", r + 1,
                  single.back(), mesh.back(), ping_pong.back());
    }
  }
  const double s_med = moemesh::bench::Median(single), m_med = moemesh::bench::Median(mesh),
               p_med = moemesh::bench::Median(ping_pong);
  std::printf("%-16s %12s\n", "median of rounds", "tokens/s");
  std::printf("%-16s %12.0f\n", "single process", s_med);
  std::printf("%-16s %12.0f\n", "mesh", m_med);
  std::printf("%-16s %12.0f\n", "mesh, ping-pong", p_med);
  std::printf("mesh / single = %.2f (target >= 0.8)\n", m_med / s_med);
  std::printf("ping-pong / mesh = %.2f\n", p_med / m_med);
  return 0;
}
