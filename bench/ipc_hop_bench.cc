// The cost of one cuda-ipc expert hop (docs/PERFORMANCE.md): a layer's rows
// from a router's GPU memory to a moemesh-expert process on the same GPU
// and the combined rows back, against a device-to-device copy of the same
// bytes in and out within one process. The rows are routed to no expert, so
// the worker only writes zeros and the figure is the transport: the two
// copies, the two interprocess events, and a small message each way. Up to
// 4,096 rows the routing goes on the GPU too (the decode path: the worker
// groups the rows there); larger batches are grouped here (the prefill
// path: the groups go in the message).
// Payloads of 4 KB to 8 MB of f32 rows of the demo model (hidden size 256);
// the worker is started here (MOEMESH_EXPERT_BIN, or beside MOEMESH_BIN's
// CLI in the build tree).
//
//   ipc_hop_bench [--iterations 200] [--model models/fortune-moe]
//
// One row per payload: median hop µs with the GPU work ordered by the
// router's counter (--cuda-ipc-sync counter), by interprocess events (gpu) and
// on the hosts (host), the copy µs, the best hop's ratio to it, and the
// target the issue sets (hop <= 1.5 x copy + 20 µs). Then where the
// counter's hop goes: "answer" is when Execute returned (the worker's
// answer read: the hosts' round trip), and "piped" the time a hop takes
// when kPiped hops go back to back, Finish without Settle, and one Settle
// and one wait at the end (the host running ahead, as in a decode step);
// "graph" the same kPiped hops captured into a CUDA graph and replayed
// (ExpertExecutor::Replay: the requests sent as the graph starts, so no
// host stands between the two GPUs; routing on the GPU only).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "core/common/subprocess.h"
#include "core/experts/expert_executor.h"
#include "core/kernels/cpu/gating_rule.h"
#include "core/kernels/cuda/cuda_ipc.h"
#include "core/kernels/cuda/cuda_runtime_util.h"
#include "core/model/config.h"
#include "services/expert_client/cuda_ipc_transport.h"
#include "services/expert_client/remote_expert_executor.h"

namespace moemesh {
namespace {

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int Run(int argc, char** argv) {
  int iterations = 200;
  std::string model = "models/fortune-moe";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--iterations") {
      iterations = std::max(1, std::atoi(value.c_str()));
    } else if (flag == "--model") {
      model = value;
    } else {
      std::fprintf(stderr, "ipc_hop_bench: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (CudaDeviceCount() == 0) {
    std::fprintf(stderr, "ipc_hop_bench: no CUDA device\n");
    return 1;
  }
  auto config = LoadModelConfig(model);
  if (!config.ok()) {
    std::fprintf(stderr, "ipc_hop_bench: %s\n", std::string(config.status().message()).c_str());
    return 1;
  }
  auto worker = Subprocess::Start({ServiceBinaryForTests("moemesh-expert", "MOEMESH_EXPERT_BIN"), "--model", model,
                                   "--device", "cuda", "--port", "0", "--metrics-port", "-1"});
  absl::StatusOr<std::string> line =
      worker.ok() ? (*worker)->WaitForLine("listening on ", absl::Seconds(120)) : worker.status();
  if (!line.ok()) {
    std::fprintf(stderr, "ipc_hop_bench: the expert worker: %s\n", std::string(line.status().message()).c_str());
    return 1;
  }
  (*worker)->ForwardOutput(2);
  constexpr CudaIpcTransport::Sync kSyncs[] = {CudaIpcTransport::Sync::kCounter, CudaIpcTransport::Sync::kGpu,
                                               CudaIpcTransport::Sync::kHost};
  std::unique_ptr<RemoteExpertExecutor> remotes[3];  // counter, events, hosts
  for (int i = 0; i < 3; ++i) {
    RemoteExpertExecutor::Options options;
    options.cuda_device = 0;
    options.device_rows = CudaIpcTransport::Wrapper(0, 8, 256, kSyncs[i]);
    options.graph_steps = true;
    auto remote = RemoteExpertExecutor::Connect({{*line}}, config->hidden_size, options);
    if (!remote.ok() || (*remote)->cuda_device() != 0) {
      std::fprintf(stderr, "ipc_hop_bench: no cuda-ipc: %s\n",
                   remote.ok() ? "the rows would go through the host" : std::string(remote.status().message()).c_str());
      return 1;
    }
    remotes[i] = std::move(*remote);
  }
  int layer = 0;
  while (layer < config->num_layers && !config->is_moe_layer[layer]) ++layer;
  const int h = config->hidden_size;
  const size_t row_bytes = static_cast<size_t>(h) * sizeof(float);
  std::printf("cuda-ipc hop (rows to a worker on the same GPU and back) against a device-to-device copy of the "
              "same bytes in and out; %d iterations, medians\n",
              iterations);
  std::printf("%10s %8s %8s %11s %10s %10s %10s %8s %14s %10s %10s %10s\n", "payload", "rows", "routing", "counter us",
              "event us", "host us", "copy us", "x copy", "1.5 copy+20us", "answer us", "piped us", "graph us");
  auto graph_stream = OwnedStream::Create();
  if (!graph_stream.ok()) {
    std::fprintf(stderr, "ipc_hop_bench: %s\n", std::string(graph_stream.status().message()).c_str());
    return 1;
  }
  const CudaStream gs = (*graph_stream)->get();
  for (const size_t bytes : {size_t{4} << 10, size_t{16} << 10, size_t{64} << 10, size_t{256} << 10, size_t{1} << 20,
                             size_t{4} << 20, size_t{8} << 20}) {
    const int n = static_cast<int>(bytes / row_bytes);
    const bool on_gpu = n <= kMaxDeviceGroupedRoutes;
    auto in = DeviceBuffer::Allocate(bytes), out = DeviceBuffer::Allocate(bytes), far = DeviceBuffer::Allocate(bytes);
    std::vector<int> ids(n, -1);  // routed to no expert: the worker writes zeros
    std::vector<float> weights(n, 0.f);
    auto d_ids = DeviceBuffer::Allocate(n * sizeof(int)), d_weights = DeviceBuffer::Allocate(n * sizeof(float));
    if (!in.ok() || !out.ok() || !far.ok() || !d_ids.ok() || !d_weights.ok() || !(*in)->Fill(0).ok() ||
        !(*d_ids)->CopyFrom(ids.data(), n * sizeof(int)).ok() ||
        !(*d_weights)->CopyFrom(weights.data(), n * sizeof(float)).ok()) {
      std::fprintf(stderr, "ipc_hop_bench: no room for %zu bytes\n", bytes);
      return 1;
    }
    ExpertBatch batch{layer, n, h, (*in)->as<float>(), 1, on_gpu ? (*d_ids)->as<int>() : ids.data(),
                      on_gpu ? (*d_weights)->as<float>() : weights.data()};
    batch.on_device = true;
    batch.routing_on_device = on_gpu;
    std::vector<double> hops[3], copy, answer, piped, graphed;
    constexpr int kPiped = 16;
    std::unique_ptr<CudaGraph> graph;
    int64_t recording = -1;
    for (int i = 0; i < iterations + 10; ++i) {
      if (i == 10 && on_gpu && remotes[0]->replays()) {  // set up by the steps before
        ExpertBatch b = batch;
        b.cuda_stream = gs;
        absl::Status st = remotes[0]->BeginRecording();
        if (st.ok()) st = CudaGraph::BeginCapture(gs);
        for (int k = 0; k < kPiped && st.ok(); ++k) {
          st = remotes[0]->Start(b, (*out)->as<float>(), 0);
          if (st.ok()) st = remotes[0]->Finish(0);
        }
        auto captured = CudaGraph::EndCapture(gs);
        const bool ok = st.ok() && captured.ok();
        if (!remotes[0]->EndRecording(ok, &recording).ok() || !ok) {
          std::fprintf(stderr, "ipc_hop_bench: no graph of %zu bytes: %s\n", bytes,
                       std::string((st.ok() ? captured.status() : st).message()).c_str());
          CudaClearLastError();
        } else {
          graph = std::move(*captured);
        }
      }
      if (i >= 10 && i % 4 == 0 && graph) {
        auto t0 = std::chrono::steady_clock::now();
        absl::Status st = remotes[0]->Replay(recording, [&] { return graph->Launch(gs); });
        if (st.ok()) st = remotes[0]->Settle();
        if (st.ok()) st = CudaSynchronize(gs);
        if (!st.ok()) {
          std::fprintf(stderr, "ipc_hop_bench: %s\n", std::string(st.message()).c_str());
          return 1;
        }
        graphed.push_back(1e6 * std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / kPiped);
      }
      for (int r = 0; r < 3; ++r) {
        auto t0 = std::chrono::steady_clock::now();
        absl::Status st = remotes[r]->Execute(batch, (*out)->as<float>());
        if (r == 0 && i >= 10) {
          answer.push_back(1e6 * std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
        if (st.ok()) st = CudaSynchronize(nullptr);
        const double us = 1e6 * std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (!st.ok()) {
          std::fprintf(stderr, "ipc_hop_bench: %s\n", std::string(st.message()).c_str());
          return 1;
        }
        if (i >= 10) hops[r].push_back(us);
      }
      if (i >= 10 && i % 4 == 0) {
        auto t0 = std::chrono::steady_clock::now();
        absl::Status st;
        for (int k = 0; k < kPiped && st.ok(); ++k) {
          st = remotes[0]->Start(batch, (*out)->as<float>(), 0);
          if (st.ok()) st = remotes[0]->Finish(0);
        }
        if (st.ok()) st = remotes[0]->Settle();
        if (st.ok()) st = CudaSynchronize(nullptr);
        if (!st.ok()) {
          std::fprintf(stderr, "ipc_hop_bench: %s\n", std::string(st.message()).c_str());
          return 1;
        }
        piped.push_back(1e6 * std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / kPiped);
      }
      auto t0 = std::chrono::steady_clock::now();
      absl::Status st = CopyOnDeviceAsync((*far)->data(), (*in)->data(), bytes, nullptr);
      if (st.ok()) st = CopyOnDeviceAsync((*out)->data(), (*far)->data(), bytes, nullptr);
      if (st.ok()) st = CudaSynchronize(nullptr);
      const double copy_us = 1e6 * std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (!st.ok()) {
        std::fprintf(stderr, "ipc_hop_bench: %s\n", std::string(st.message()).c_str());
        return 1;
      }
      if (i >= 10) copy.push_back(copy_us);
    }
    const double k_us = Median(hops[0]), g_us = Median(hops[1]), h_us = Median(hops[2]), c_us = Median(copy),
                 best = std::min({k_us, g_us, h_us});
    char graph_us[32] = "-";
    if (!graphed.empty()) std::snprintf(graph_us, sizeof(graph_us), "%.1f", Median(graphed));
    std::printf("%8zu K %8d %8s %11.1f %10.1f %10.1f %10.1f %7.2fx %14s %10.1f %10.1f %10s\n", bytes >> 10, n,
                on_gpu ? "gpu" : "host", k_us, g_us, h_us, c_us, best / c_us,
                best <= 1.5 * c_us + 20 ? "met" : "missed", Median(answer), Median(piped), graph_us);
    if (graph) remotes[0]->ForgetRecording(recording);
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) { return moemesh::Run(argc, argv); }
