// The cost of one expert hop: round-trip time of a Dispatch from
// RemoteExpertExecutor to a worker, over the raw data channel (the default),
// the same with the rows in bf16 (what GPU workers get), in FP8
// (--expert-rows fp8) and in FP8 with bf16 answers (--expert-answers bf16),
// and over the gRPC stream, against a plain TCP echo of
// the f32 rows' bytes, on loopback, for payloads of 4 KB to 2 MB of f32
// rows. The worker side widens the rows to f32 as a worker does and answers
// with zeros of the same size (f32, or bf16 where asked) without computing,
// so the figure is the transport and the conversions alone. To see a slower link, shape the
// loopback first (as root): tc qdisc add dev lo root tbf rate 10gbit burst
// 512kb latency 5ms (and tc qdisc del dev lo root after).
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
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "core/experts/expert_executor.h"
#include "moemesh/v1/expert.grpc.pb.h"
#include "services/common/frame_socket.h"
#include "services/common/server_util.h"
#include "services/common/tensor_proto.h"
#include "services/expert_client/remote_expert_executor.h"

namespace moemesh {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// An expert service that answers every row with zeros: transport only.
class NullExpertService final : public v1::ExpertService::Service {
 public:
  explicit NullExpertService(int hidden) : hidden_(hidden) {}
  void set_data_port(int p) { data_port_ = p; }
  grpc::Status Dispatch(grpc::ServerContext*,
                        grpc::ServerReaderWriter<v1::DispatchResponse, v1::DispatchRequest>* stream) override {
    v1::DispatchRequest req;
    std::vector<float> zeros, widened;
    while (stream->Read(&req)) {
      const std::string& data = req.hidden_states().data();
      if (!GetRowsAsF32(req.hidden_states(), data.data(), data.size(), hidden_, "rows", req.hidden_scales(), &widened)
               .ok()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad rows");
      }
      v1::DispatchResponse resp;
      resp.set_step(req.step());
      resp.set_layer(req.layer());
      int rows = 0;
      for (const auto& g : req.groups()) rows += g.rows_size();
      zeros.assign(static_cast<size_t>(rows) * hidden_, 0.0f);
      SetF32Tensor(zeros.data(), rows, hidden_, resp.mutable_outputs());
      if (req.bf16_outputs()) {  // zeros in bf16 are the first half of the bytes
        SetBf16Shape(rows, hidden_, resp.mutable_outputs());
        resp.mutable_outputs()->set_data(reinterpret_cast<const char*>(zeros.data()), zeros.size() * 2);
      }
      if (!stream->Write(resp)) break;
    }
    return grpc::Status::OK;
  }
  // The same answers on the raw data channel.
  void ServeFrames(FrameSocket* socket) {
    v1::DispatchRequest req;
    std::vector<char> payload;
    std::vector<float> zeros, widened;
    while (socket->Receive(&req, &payload).ok()) {
      if (!GetRowsAsF32(req.hidden_states(), payload.data(), payload.size(), hidden_, "rows", req.hidden_scales(),
                        &widened)
               .ok()) {
        return;
      }
      v1::DispatchResponse resp;
      resp.set_step(req.step());
      resp.set_layer(req.layer());
      int rows = 0;
      for (const auto& g : req.groups()) rows += g.rows_size();
      zeros.assign(static_cast<size_t>(rows) * hidden_, 0.0f);
      SetF32Shape(rows, hidden_, resp.mutable_outputs());
      iovec data{zeros.data(), zeros.size() * sizeof(float)};
      if (req.bf16_outputs()) {  // zeros in bf16 are the first half of the bytes
        SetBf16Shape(rows, hidden_, resp.mutable_outputs());
        data.iov_len /= 2;
      }
      if (!socket->Send(resp, {&data, 1}).ok()) return;
    }
  }
  grpc::Status GetShardInfo(grpc::ServerContext*, const v1::GetShardInfoRequest*, v1::ShardInfo* info) override {
    info->set_data_port(data_port_);
    info->set_shard_index(0);
    info->set_num_shards(1);
    info->set_hidden_size(hidden_);
    info->set_num_layers(1);
    info->set_num_experts(1);  // the bench routes every row to expert 0
    info->set_fp8_rows(true);
    info->set_bf16_outputs(true);
    return grpc::Status::OK;
  }

 private:
  int hidden_;
  int data_port_ = 0;
};

// A TCP echo server on loopback and a connection to it: RoundTrip sends
// `bytes` and reads them back.
class TcpEcho {
 public:
  explicit TcpEcho(size_t bytes) : bytes_(bytes), out_(bytes, 1), in_(bytes) {
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(ls, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    socklen_t len = sizeof addr;
    getsockname(ls, reinterpret_cast<sockaddr*>(&addr), &len);
    listen(ls, 1);
    server_ = std::thread([this, ls] {
      int c = accept(ls, nullptr, nullptr);
      close(ls);
      int one = 1;
      setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      std::vector<char> buf(bytes_);
      for (;;) {
        size_t got = 0;
        while (got < bytes_) {
          ssize_t n = read(c, buf.data() + got, bytes_ - got);
          if (n <= 0) {
            close(c);
            return;
          }
          got += n;
        }
        size_t sent = 0;
        while (sent < bytes_) sent += write(c, buf.data() + sent, bytes_ - sent);
      }
    });
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  ~TcpEcho() {
    close(fd_);
    server_.join();
  }
  double RoundTrip() {
    double t0 = Now();
    size_t sent = 0;
    while (sent < bytes_) sent += write(fd_, out_.data() + sent, bytes_ - sent);
    size_t got = 0;
    while (got < bytes_) got += read(fd_, in_.data() + got, bytes_ - got);
    return Now() - t0;
  }

 private:
  size_t bytes_;
  std::vector<char> out_, in_;
  int fd_ = -1;
  std::thread server_;
};

double Median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

int Main(int argc, char** argv) {
  int iterations = 200;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--iterations") iterations = std::atoi(argv[i + 1]);
  }
  const int hidden = 1024;  // 4 KB per row
  NullExpertService service(hidden);
  auto frames = FrameServer::Start("127.0.0.1", 0, [&service](FrameSocket* s) { service.ServeFrames(s); });
  if (!frames.ok()) return 1;
  service.set_data_port((*frames)->port());
  int port = 0;
  auto server = StartServer("127.0.0.1:0", {&service}, &port);
  const std::string address = "127.0.0.1:" + std::to_string(port);
  const std::vector<std::vector<std::string>> shards = {{address}};
  RemoteExpertExecutor::Options grpc_options;
  grpc_options.use_data_channel = false;
  auto raw = RemoteExpertExecutor::Connect(shards, hidden);
  auto grpc_stream = RemoteExpertExecutor::Connect(shards, hidden, grpc_options);
  RemoteExpertExecutor::Options bf16_options;
  bf16_options.rows = RemoteExpertExecutor::Rows::kBf16;
  auto bf16 = RemoteExpertExecutor::Connect(shards, hidden, bf16_options);
  RemoteExpertExecutor::Options fp8_options;
  fp8_options.rows = RemoteExpertExecutor::Rows::kFp8;
  auto fp8 = RemoteExpertExecutor::Connect(shards, hidden, fp8_options);
  fp8_options.answers = RemoteExpertExecutor::Answers::kBf16;
  auto fp8_bf16 = RemoteExpertExecutor::Connect(shards, hidden, fp8_options);
  if (!raw.ok() || !grpc_stream.ok() || !bf16.ok() || !fp8.ok() || !fp8_bf16.ok()) {
    std::fprintf(stderr, "cannot connect\n");
    return 1;
  }
  std::printf("%-10s %10s %10s %10s %10s %10s %10s %12s %10s %10s %10s %10s\n", "payload", "channel us", "bf16 us",
              "fp8 us", "fp8+bf16", "grpc us", "echo us", "channel/echo", "bf16/echo", "fp8/echo", "fp8+/echo",
              "grpc/echo");
  for (int rows : {1, 4, 16, 64, 256, 512}) {
    std::vector<float> hidden_states(static_cast<size_t>(rows) * hidden, 0.5f), out(hidden_states.size());
    std::vector<int> ids(rows, 0);
    std::vector<float> weights(rows, 1.0f);
    ExpertBatch batch{0, rows, hidden, hidden_states.data(), 1, ids.data(), weights.data()};
    // They are interleaved, one round trip of each in turn, so that all see
    // the same machine (a 2-core VM's timing drifts).
    TcpEcho echo_server(static_cast<size_t>(rows) * hidden * sizeof(float));
    std::vector<double> t_channel, t_bf16, t_fp8, t_fp8_bf16, t_grpc, t_echo;
    auto once = [&](RemoteExpertExecutor* ex) {
      double t0 = Now();
      if (!ex->Execute(batch, out.data()).ok()) std::exit(1);
      return Now() - t0;
    };
    for (int i = 0; i < iterations + 10; ++i) {
      double a = once(raw->get()), half = once(bf16->get()), quarter = once(fp8->get()),
             both = once(fp8_bf16->get()), b = once(grpc_stream->get()), c = echo_server.RoundTrip();
      if (i < 10) continue;  // warm-up
      t_channel.push_back(a);
      t_bf16.push_back(half);
      t_fp8.push_back(quarter);
      t_fp8_bf16.push_back(both);
      t_grpc.push_back(b);
      t_echo.push_back(c);
    }
    double channel = Median(t_channel), half = Median(t_bf16), quarter = Median(t_fp8), both = Median(t_fp8_bf16),
           via_grpc = Median(t_grpc), echo = Median(t_echo);
    size_t bytes = static_cast<size_t>(rows) * hidden * sizeof(float);
    std::printf("%-10s %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f %12.2f %10.2f %10.2f %10.2f %10.2f\n",
                (std::to_string(bytes / 1024) + " KB").c_str(), channel * 1e6, half * 1e6, quarter * 1e6, both * 1e6,
                via_grpc * 1e6, echo * 1e6, channel / echo, half / echo, quarter / echo, both / echo,
                via_grpc / echo);
  }
  raw->reset();
  bf16->reset();
  fp8->reset();
  fp8_bf16->reset();
  grpc_stream->reset();
  (*frames)->Stop();
  server->Shutdown();
  return 0;
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) { return moemesh::Main(argc, argv); }
