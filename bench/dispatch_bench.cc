// The cost of one expert hop: round-trip time of a Dispatch on the
// long-lived gRPC stream (RemoteExpertExecutor -> ExpertService) against a
// plain TCP echo of the same bytes, on loopback, for payloads of 4 KB to
// 2 MB. The worker side answers with an output of the same size without
// computing, so the figure is transport alone.
//
//   build/bench/dispatch_bench [--iterations 200]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "core/engine/expert_executor.h"
#include "moemesh/v1/expert.grpc.pb.h"
#include "services/common/server_util.h"
#include "services/common/tensor_proto.h"
#include "services/router/remote_expert_executor.h"

namespace moemesh {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// An expert service that answers every row with zeros: transport only.
class NullExpertService final : public v1::ExpertService::Service {
 public:
  explicit NullExpertService(int hidden) : hidden_(hidden) {}
  grpc::Status Dispatch(grpc::ServerContext*,
                        grpc::ServerReaderWriter<v1::DispatchResponse, v1::DispatchRequest>* stream) override {
    v1::DispatchRequest req;
    std::vector<float> zeros;
    while (stream->Read(&req)) {
      v1::DispatchResponse resp;
      resp.set_step(req.step());
      resp.set_layer(req.layer());
      int rows = 0;
      for (const auto& g : req.groups()) rows += g.rows_size();
      zeros.assign(static_cast<size_t>(rows) * hidden_, 0.0f);
      SetF32Tensor(zeros.data(), rows, hidden_, resp.mutable_outputs());
      if (!stream->Write(resp)) break;
    }
    return grpc::Status::OK;
  }
  grpc::Status GetShardInfo(grpc::ServerContext*, const v1::GetShardInfoRequest*, v1::ShardInfo* info) override {
    info->set_shard_index(0);
    info->set_num_shards(1);
    info->set_hidden_size(hidden_);
    return grpc::Status::OK;
  }

 private:
  int hidden_;
};

// Median round trip of `bytes` through a TCP echo server on loopback.
double TcpEchoSeconds(size_t bytes, int iterations) {
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(ls, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(ls, reinterpret_cast<sockaddr*>(&addr), &len);
  listen(ls, 1);
  std::thread server([&] {
    int c = accept(ls, nullptr, nullptr);
    int one = 1;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    std::vector<char> buf(bytes);
    for (int i = 0; i < iterations; ++i) {
      size_t got = 0;
      while (got < bytes) {
        ssize_t n = read(c, buf.data() + got, bytes - got);
        if (n <= 0) return;
        got += n;
      }
      size_t sent = 0;
      while (sent < bytes) sent += write(c, buf.data() + sent, bytes - sent);
    }
    close(c);
  });
  int s = socket(AF_INET, SOCK_STREAM, 0);
  connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  int one = 1;
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  std::vector<char> out(bytes, 1), in(bytes);
  std::vector<double> times;
  for (int i = 0; i < iterations; ++i) {
    double t0 = Now();
    size_t sent = 0;
    while (sent < bytes) sent += write(s, out.data() + sent, bytes - sent);
    size_t got = 0;
    while (got < bytes) got += read(s, in.data() + got, bytes - got);
    times.push_back(Now() - t0);
  }
  server.join();
  close(s);
  close(ls);
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2];
}

int Main(int argc, char** argv) {
  int iterations = 200;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--iterations") iterations = std::atoi(argv[i + 1]);
  }
  const int hidden = 1024;  // 4 KB per row
  NullExpertService service(hidden);
  int port = 0;
  auto server = StartServer("127.0.0.1:0", {&service}, &port);
  auto remote = RemoteExpertExecutor::Connect({"127.0.0.1:" + std::to_string(port)}, hidden);
  if (!remote.ok()) {
    std::fprintf(stderr, "%s\n", std::string(remote.status().message()).c_str());
    return 1;
  }
  std::printf("%-10s %14s %14s %8s\n", "payload", "dispatch us", "tcp echo us", "ratio");
  for (int rows : {1, 4, 16, 64, 256, 512}) {
    std::vector<float> hidden_states(static_cast<size_t>(rows) * hidden, 0.5f), out(hidden_states.size());
    std::vector<int> ids(rows, 0);
    std::vector<float> weights(rows, 1.0f);
    ExpertBatch batch{0, rows, hidden, hidden_states.data(), 1, ids.data(), weights.data()};
    std::vector<double> times;
    for (int i = 0; i < iterations + 10; ++i) {
      double t0 = Now();
      if (!(*remote)->Execute(batch, out.data()).ok()) return 1;
      if (i >= 10) times.push_back(Now() - t0);
    }
    std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
    double dispatch = times[times.size() / 2];
    size_t bytes = static_cast<size_t>(rows) * hidden * sizeof(float);
    double echo = TcpEchoSeconds(bytes, iterations);
    std::printf("%-10s %14.1f %14.1f %8.2f\n", (std::to_string(bytes / 1024) + " KB").c_str(), dispatch * 1e6,
                echo * 1e6, dispatch / echo);
  }
  remote->reset();
  server->Shutdown();
  return 0;
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) { return moemesh::Main(argc, argv); }
