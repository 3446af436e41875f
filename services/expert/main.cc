// moemesh-expert: serves the experts of one shard over gRPC.
//   moemesh-expert --model DIR --shard-index I --num-shards N [--port 0] [--threads T]
// Prints "listening on HOST:PORT" once serving; stops on SIGINT/SIGTERM.

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "services/common/device_flag.h"
#include "services/common/frame_socket.h"
#include "services/common/server_util.h"
#include "core/metrics/gpu_collector.h"
#include "core/metrics/metrics_server.h"
#include "prometheus/registry.h"
#include "services/expert/expert_metrics.h"
#include "services/expert/expert_service.h"
#ifdef MOEMESH_WITH_CUDA
#include "core/experts/cuda/cuda_expert_device.h"
#endif
#include "services/expert/expert_worker.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory");
ABSL_FLAG(int, shard_index, 0, "this worker's shard: experts e with e mod num_shards == shard_index");
ABSL_FLAG(int, num_shards, 1, "number of expert shards");
ABSL_FLAG(std::string, placement, "", "placement file (JSON) saying which experts each shard holds; sets the shard count");
ABSL_FLAG(std::string, host, "127.0.0.1", "address to listen on");
ABSL_FLAG(int, port, 0, "port to listen on; 0 picks a free one");
ABSL_FLAG(int, metrics_port, 0, "port of the Prometheus /metrics endpoint; 0 picks a free one, -1 serves none");
ABSL_FLAG(int, data_port, 0, "port of the raw data channel for Dispatch (0 picks a free one, -1 offers none)");
ABSL_FLAG(int, threads, 1, "CPU threads for the expert kernels");
ABSL_FLAG(std::string, device, "cpu", "where the experts run: cpu, or cuda[:N] (GPU N, default 0)");
ABSL_FLAG(int, gpu_lanes, 2, "with --device cuda: requests that run on the GPU side by side");
ABSL_FLAG(int, gpu_chunk_rows, 256, "with --device cuda: rows per pipelined chunk of a request");

int main(int argc, char** argv) {
  moemesh::InitService(argc, argv, "moemesh-expert --model DIR --shard-index I --num-shards N [--port P]");

  moemesh::ExpertWorker::Options opt;
  opt.model_dir = absl::GetFlag(FLAGS_model);
  opt.shard_index = absl::GetFlag(FLAGS_shard_index);
  opt.num_shards = absl::GetFlag(FLAGS_num_shards);
  opt.placement_file = absl::GetFlag(FLAGS_placement);
  opt.threads = absl::GetFlag(FLAGS_threads);
  auto device = moemesh::ParseDeviceFlag(absl::GetFlag(FLAGS_device));
  if (!device.ok()) {
    std::fprintf(stderr, "moemesh-expert: error: %s\n", std::string(device.status().message()).c_str());
    return 2;
  }
  const int gpu = *device;  // the GPU in use (-1: none), for its metrics
  if (gpu >= 0) {
#ifdef MOEMESH_WITH_CUDA
    moemesh::CudaExpertDevice::Options cuda;
    cuda.lanes = absl::GetFlag(FLAGS_gpu_lanes);
    cuda.chunk_rows = absl::GetFlag(FLAGS_gpu_chunk_rows);
    opt.device = moemesh::CudaExpertDevice::Factory(gpu, cuda);
#else
    std::fprintf(stderr, "moemesh-expert: error: --device %s: this build has no CUDA (nvcc was not found)\n",
                 absl::GetFlag(FLAGS_device).c_str());
    return 2;
#endif
  }
  if (opt.model_dir.empty()) {
    std::fprintf(stderr, "moemesh-expert: error: --model DIR is required\n");
    return 2;
  }
  auto worker = moemesh::ExpertWorker::Create(opt);
  if (!worker.ok()) {
    std::fprintf(stderr, "moemesh-expert: error: %s\n", std::string(worker.status().message()).c_str());
    return 2;
  }
  moemesh::ExpertServiceImpl service(worker->get());
  auto registry = std::make_shared<prometheus::Registry>();
  moemesh::ExpertMetrics metrics(*registry);
  service.set_metrics(&metrics);
  auto started = moemesh::MetricsServer::StartIfEnabled(absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_metrics_port),
                                                        registry);
  if (!started.ok()) {
    std::fprintf(stderr, "moemesh-expert: error: %s\n", std::string(started.status().message()).c_str());
    return 1;
  }
  std::unique_ptr<moemesh::MetricsServer> metrics_server = std::move(*started);
  std::unique_ptr<moemesh::FrameServer> frames;
  if (absl::GetFlag(FLAGS_data_port) >= 0) {
    auto f = moemesh::FrameServer::Start(absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_data_port),
                                         [&service](moemesh::FrameSocket* s) { service.ServeFrames(s); });
    if (!f.ok()) {
      std::fprintf(stderr, "moemesh-expert: error: %s\n", std::string(f.status().message()).c_str());
      return 1;
    }
    frames = std::move(*f);
    service.set_data_port(frames->port());
  }
  int port = 0;
  std::string address = absl::GetFlag(FLAGS_host) + ":" + std::to_string(absl::GetFlag(FLAGS_port));
  auto server = moemesh::StartServer(address, {&service}, &port);
  if (server == nullptr) {
    std::fprintf(stderr, "moemesh-expert: error: cannot listen on %s\n", address.c_str());
    return 1;
  }
  if (metrics_server && gpu >= 0) {
    if (auto c = moemesh::GpuCollector::Create({gpu})) metrics_server->Register(c);
  }
  moemesh::AnnounceService(absl::GetFlag(FLAGS_host), port, metrics_server ? metrics_server->port() : 0);
  moemesh::WaitForTerminationSignal();
  // Requests being computed finish; then the routers' streams are cancelled
  // (they resend to another replica).
  moemesh::ShutdownGracefully(server.get(), [&] { return service.busy(); });
  if (frames) frames->Stop();
  (void)metrics_server.release();  // its web server takes seconds to stop; the process ends
  return 0;
}
