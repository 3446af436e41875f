// The HTTP API's streaming overhead: the same load through the gateway's
// gRPC API and through POST /v1/completions (server-sent events), on one
// mesh started by `moemesh up`, in the same run. The load is N concurrent
// streams of T tokens each (ignore_eos, greedy), from prompts of a few
// token ids; rounds alternate between the two, and the medians are compared.
//
//   build/bench/http_bench [--model models/fortune-moe] [--streams 32] [--tokens 128]
//                          [--rounds 5] [--moemesh build/tools/moemesh/moemesh]
#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "bench/mesh_load.h"
#include "core/common/subprocess.h"
#include "moemesh/v1/gateway.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "services/common/server_util.h"

namespace moemesh {
namespace {

using bench::Now;
using bench::Prompt;

Subprocess* g_mesh = nullptr;  // stopped on the way out, so no service outlives the bench

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "http_bench: %s\n", message.c_str());
  if (g_mesh != nullptr) g_mesh->Stop();
  std::exit(1);
}

class Mesh {
 public:
  Mesh(const std::string& moemesh, const std::string& model) {
    auto up = Subprocess::Start(
        {moemesh, "up", "--model=" + model, "--expert-shards=2", "--http-port=0", "--kvcache=false"});
    if (!up.ok()) Die(std::string(up.status().message()));
    up_ = std::move(*up);
    g_mesh = up_.get();
    auto http = up_->WaitForLine("  OpenAI-compatible HTTP API at http://", absl::Seconds(120));
    auto target = up_->WaitForLine("gateway listening on ", absl::Seconds(120));
    if (!http.ok() || !target.ok()) Die("moemesh up did not start");
    http_ = http->substr(0, http->find('/'));  // HOST:PORT
    up_->ForwardOutput(-1);
    stub_ = v1::Gateway::NewStub(
        grpc::CreateCustomChannel(*target, grpc::InsecureChannelCredentials(), ClientChannelArguments()));
    GrpcStream(0, 4);  // connections up before any clock starts
    HttpStream(0, 4);
  }
  ~Mesh() {
    g_mesh = nullptr;
    up_->Stop();
  }

  // Tokens per second of `streams` concurrent streams of `tokens` each.
  double Run(bool http, int streams, int tokens) {
    const double t0 = Now();
    std::vector<std::thread> clients;
    for (int i = 0; i < streams; ++i) {
      clients.emplace_back([this, http, i, tokens] { http ? HttpStream(i, tokens) : GrpcStream(i, tokens); });
    }
    for (auto& c : clients) c.join();
    return static_cast<double>(streams) * tokens / (Now() - t0);
  }

 private:
  void GrpcStream(int i, int n) {
    if (!bench::GreedyGrpcStream(stub_.get(), i, n)) Die("a gRPC stream failed");
  }

  // One SSE stream, read as it arrives; its usage chunk says how many
  // tokens came.
  void HttpStream(int i, int n) {
    const size_t colon = http_.rfind(':');
    httplib::Client client(http_.substr(0, colon), std::atoi(http_.c_str() + colon + 1));
    client.set_read_timeout(std::chrono::seconds(300));
    const nlohmann::json body = {{"prompt", Prompt(i)},   {"max_tokens", n},
                                 {"ignore_eos", true},    {"temperature", 0},
                                 {"stream", true},        {"stream_options", {{"include_usage", true}}}};
    std::string events;
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = body.dump();
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
      events.append(data, len);
      return true;
    };
    auto res = client.send(req);
    if (!res) Die(absl::StrCat("an HTTP stream failed: ", httplib::to_string(res.error())));
    if (res->status != 200) Die(absl::StrCat("an HTTP stream failed: ", res->status, " ", events));
    const size_t usage = events.rfind("\"completion_tokens\":");
    if (usage == std::string::npos || std::atoi(events.c_str() + usage + 20) != n) Die("an HTTP stream came short");
  }

  std::unique_ptr<Subprocess> up_;
  std::string http_;
  std::unique_ptr<v1::Gateway::Stub> stub_;
};

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) {
  std::string model = "models/fortune-moe", moemesh = "build/tools/moemesh/moemesh";
  int streams = 32, tokens = 128, rounds = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--model")) model = argv[i + 1];
    else if (!std::strcmp(argv[i], "--moemesh")) moemesh = argv[i + 1];
    else if (!std::strcmp(argv[i], "--streams")) streams = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--tokens")) tokens = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--rounds")) rounds = std::atoi(argv[i + 1]);
  }
  std::printf("model %s, %d streams x %d tokens, one mesh (gateway, router, 2 expert shards)\n", model.c_str(),
              streams, tokens);
  std::vector<double> grpc_rate, http_rate;
  moemesh::Mesh m(moemesh, model);
  for (int r = 0; r < rounds; ++r) {
    grpc_rate.push_back(m.Run(false, streams, tokens));
    http_rate.push_back(m.Run(true, streams, tokens));
    std::printf("round %d: gRPC %.0f tokens/s, HTTP %.0f tokens/s\n", r + 1, grpc_rate.back(), http_rate.back());
  }
  const double g = moemesh::bench::Median(grpc_rate), h = moemesh::bench::Median(http_rate);
  std::printf("%-22s %12s\n", "median of rounds", "tokens/s");
  std::printf("%-22s %12.0f\n", "gRPC API", g);
  std::printf("%-22s %12.0f\n", "HTTP /v1/completions", h);
  std::printf("HTTP / gRPC = %.2f (target >= 0.95)\n", h / g);
  return 0;
}
