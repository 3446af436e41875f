// moemesh-router: attention, gating and sampling for a continuous batch,
// with the routed experts on expert workers (or in this process).
//   moemesh-router --model DIR [--experts "a|b,c"] [--port 0] [--threads T]
// Prints "listening on HOST:PORT" once serving; stops on SIGINT/SIGTERM.

#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "core/engine/engine.h"
#include "core/engine/generation_loop.h"
#include "core/experts/placement.h"
#include "core/engine/scheduler.h"
#ifdef MOEMESH_WITH_CUDA
#include "core/engine/cuda/cuda_forward_pass.h"
#include "core/experts/cuda/cuda_expert_device.h"
#endif
#include "services/common/device_flag.h"
#include "services/common/server_util.h"
#include "services/expert_client/remote_expert_executor.h"
#include "services/router/router_metrics.h"
#include "services/router/router_service.h"
#include "core/metrics/metrics_server.h"
#include "prometheus/registry.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory");
ABSL_FLAG(std::string, experts, "",
          "expert workers: shards separated by ',', replicas of a shard by '|'; empty runs the experts here");
ABSL_FLAG(std::string, placement, "", "placement file (JSON) the expert workers were started with; default: modulo");
ABSL_FLAG(std::string, expert_transport, "auto",
          "auto: Dispatch over a worker's raw data channel when it offers one; grpc: always the gRPC stream");
ABSL_FLAG(int, experts_connect_timeout_ms, 10000, "how long to wait for the expert workers at start");
ABSL_FLAG(std::string, host, "127.0.0.1", "address to listen on");
ABSL_FLAG(int, port, 0, "port to listen on; 0 picks a free one");
ABSL_FLAG(int, metrics_port, 0, "port of the Prometheus /metrics endpoint; 0 picks a free one, -1 serves none");
ABSL_FLAG(int, threads, 1, "CPU threads for attention (and local experts)");
ABSL_FLAG(std::string, device, "cpu",
          "where attention, gating and the LM head run, and the experts without --experts: cpu, or cuda[:N] (GPU N, "
          "default 0)");
ABSL_FLAG(int, kv_cache_tokens, 65536, "capacity of the paged KV cache, in tokens");
ABSL_FLAG(int, kv_block_size, 16, "tokens per KV-cache block");
ABSL_FLAG(int, max_running, 64, "requests in the batch at once");
ABSL_FLAG(int, max_waiting, 256, "requests waiting for admission before RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_step_tokens, 2048, "tokens per forward step (the prefill budget)");
ABSL_FLAG(int, prefill_chunk, 512, "longest prompt piece of one request per step");

namespace {

int Fail(const std::string& msg, int code) {
  std::fprintf(stderr, "moemesh-router: error: %s\n", msg.c_str());
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  moemesh::InitService(argc, argv, "moemesh-router --model DIR [--experts \"a|b,c\"] [--port P]");

  const std::string model_dir = absl::GetFlag(FLAGS_model);
  if (model_dir.empty()) return Fail("--model DIR is required", 2);
  moemesh::EngineOptions opt;
  opt.num_threads = absl::GetFlag(FLAGS_threads);
  opt.kv_cache_tokens = absl::GetFlag(FLAGS_kv_cache_tokens);
  opt.kv_block_size = absl::GetFlag(FLAGS_kv_block_size);
  opt.prefill_chunk = absl::GetFlag(FLAGS_prefill_chunk);
  auto device = moemesh::ParseDeviceFlag(absl::GetFlag(FLAGS_device));
  if (!device.ok()) return Fail(std::string(device.status().message()), 2);
  if (*device >= 0) {
#ifdef MOEMESH_WITH_CUDA
    opt.forward_pass = moemesh::CudaForwardPass::Factory(*device);
    // Experts run here (no --experts): on the same GPU, rows in place.
    opt.expert_device = moemesh::CudaExpertDevice::Factory(*device);
#else
    return Fail("--device " + absl::GetFlag(FLAGS_device) + ": this build has no CUDA (nvcc was not found)", 2);
#endif
  }
  const int max_running = absl::GetFlag(FLAGS_max_running);
  const int max_waiting = absl::GetFlag(FLAGS_max_waiting);
  const int max_step_tokens = absl::GetFlag(FLAGS_max_step_tokens);
  if (max_running < 1 || max_waiting < 0 || max_step_tokens < max_running) {
    return Fail("need --max-running >= 1, --max-waiting >= 0 and --max-step-tokens >= --max-running", 2);
  }
  std::unique_ptr<moemesh::ExpertExecutor> remote;
  moemesh::RemoteExpertExecutor* remote_view = nullptr;  // owned by the engine
  if (!absl::GetFlag(FLAGS_experts).empty()) {
    auto shards = moemesh::RemoteExpertExecutor::ParseAddresses(absl::GetFlag(FLAGS_experts));
    if (!shards.ok()) return Fail(std::string(shards.status().message()), 2);
    auto config = moemesh::LoadModelConfig(model_dir);
    if (!config.ok()) return Fail(std::string(config.status().message()), 2);
    const std::string transport = absl::GetFlag(FLAGS_expert_transport);
    if (transport != "auto" && transport != "grpc") return Fail("--expert-transport must be auto or grpc", 2);
    std::optional<moemesh::ShardPlacement> placement;
    if (!absl::GetFlag(FLAGS_placement).empty()) {
      auto p = moemesh::ShardPlacement::Load(absl::GetFlag(FLAGS_placement), config->num_layers, config->num_experts);
      if (!p.ok()) return Fail(std::string(p.status().message()), 2);
      placement = std::move(*p);
    }
    auto r = moemesh::RemoteExpertExecutor::Connect(*shards, config->hidden_size,
                                                    absl::GetFlag(FLAGS_experts_connect_timeout_ms),
                                                    placement ? &*placement : nullptr, transport == "auto");
    if (!r.ok()) return Fail(std::string(r.status().message()), 1);
    remote_view = r->get();
    remote = std::move(*r);
  }
  auto engine = moemesh::Engine::Create(model_dir, opt, std::move(remote));
  if (!engine.ok()) return Fail(std::string(engine.status().message()), 2);
  // Metrics: the step observer runs on the loop's thread, after each step.
  auto registry = std::make_shared<prometheus::Registry>();
  const moemesh::ModelConfig& config = (*engine)->config();
  moemesh::RouterMetrics metrics(*registry, config.num_layers, config.num_experts);
  if (remote_view != nullptr) {
    remote_view->set_dispatch_observer(
        [&metrics](const std::string& worker, double s) { metrics.ObserveDispatch(worker, s); });
  }
  double combined = 0;  // RemoteExpertExecutor::combine_seconds at the last step
  auto on_step = [&metrics, remote_view, &combined](const moemesh::StepStats& s,
                                                      const moemesh::GenerationLoop::Stats& l) {
    const double now = remote_view ? remote_view->combine_seconds() : 0;
    metrics.OnStep(s, l, now - combined);
    combined = now;
  };
  auto started = moemesh::MetricsServer::StartIfEnabled(absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_metrics_port),
                                                        registry);
  if (!started.ok()) return Fail(std::string(started.status().message()), 1);
  std::unique_ptr<moemesh::MetricsServer> metrics_server = std::move(*started);
  auto loop = std::make_unique<moemesh::GenerationLoop>((*engine)->NewScheduler(max_running, max_step_tokens),
                                                        max_waiting, on_step);
  moemesh::RouterServiceImpl service(loop.get());
  int port = 0;
  std::string address = absl::GetFlag(FLAGS_host) + ":" + std::to_string(absl::GetFlag(FLAGS_port));
  auto server = moemesh::StartServer(address, {&service}, &port);
  if (server == nullptr) return Fail("cannot listen on " + address, 1);
  moemesh::AnnounceService(absl::GetFlag(FLAGS_host), port, metrics_server ? metrics_server->port() : 0);
  moemesh::WaitForTerminationSignal();
  // Streams in progress may finish for a while, then are cancelled; the
  // loop stops after the server.
  moemesh::ShutdownGracefully(server.get(), [&] { return service.active_calls(); });
  loop.reset();
  // The metrics endpoint's web server takes seconds to stop, and the
  // process is ending anyway.
  (void)metrics_server.release();
  return 0;
}
