// moemesh-expert: serves the experts of one shard over gRPC.
//   moemesh-expert --model DIR --shard-index I --num-shards N [--port 0] [--threads T]
// Prints "listening on HOST:PORT" once serving; stops on SIGINT/SIGTERM.

#include <functional>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "core/metrics/gpu_collector.h"
#include "core/quant/quantize.h"
#include "prometheus/registry.h"
#include "services/common/device_flag.h"
#include "services/common/frame_socket.h"
#include "services/common/service_main.h"
#include "services/common/tls.h"
#include "services/expert/expert_metrics.h"
#include "services/expert/expert_service.h"
#include "services/expert/expert_worker.h"
#ifdef MOEMESH_WITH_CUDA
#include "core/experts/cuda/cuda_expert_device.h"
#include "services/expert/cuda_ipc_server.h"
#endif

ABSL_FLAG(std::string, model, "", "checkpoint directory");
ABSL_FLAG(int, shard_index, 0, "this worker's shard: experts e with e mod num_shards == shard_index");
ABSL_FLAG(int, num_shards, 1, "number of expert shards");
ABSL_FLAG(std::string, placement, "", "placement file (JSON) saying which experts each shard holds; sets the shard count");
ABSL_FLAG(int, data_port, 0, "port of the raw data channel for Dispatch (0 picks a free one, -1 offers none)");
ABSL_FLAG(int, threads, 1, "CPU threads for the expert kernels");
ABSL_FLAG(std::string, device, "cpu", "where the experts run: cpu, or cuda[:N] (GPU N, default 0)");
ABSL_FLAG(std::string, quantize, "none",
          "quantize the experts as they load: none, int8 (a scale a row), int4 (groups of 128), int4:G or "
          "int4:G:asym (G 32, 64 or 128), :q8 after an int4 form for int8 inputs; the CPU only");
ABSL_FLAG(bool, bf16_inputs, false,
          "multiply the BF16 experts by inputs rounded to bf16, as a GPU does (AVX-512 BF16 where the CPU has "
          "it: prefill 1.3-1.8x faster); results move by bf16 rounding; the CPU only");
ABSL_FLAG(int, gpu_lanes, 2, "with --device cuda: requests that run on the GPU side by side");
ABSL_FLAG(int, gpu_chunk_rows, 256, "with --device cuda: rows per pipelined chunk of a request");
ABSL_FLAG(int, fault_delay_ms, 0,
          "fault injection, for tests: hold every answer back this long (a slow replica); 0: none");
ABSL_FLAG(bool, cuda_ipc, true,
          "with --device cuda: offer routers on this host the cuda-ipc transport (rows shared in GPU memory) where "
          "this worker holds whole layers");

namespace moemesh {
namespace {

struct Options {
  ExpertWorker::Options worker;  // the device is set from `device`
  std::string device;
  std::string quantize;
  int gpu_lanes = 0, gpu_chunk_rows = 0;
  int data_port = 0;  // -1: no raw data channel
  bool cuda_ipc = true;
  int fault_delay_ms = 0;

  static Options FromFlags() {
    Options o;
    o.worker.model_dir = absl::GetFlag(FLAGS_model);
    o.worker.shard_index = absl::GetFlag(FLAGS_shard_index);
    o.worker.num_shards = absl::GetFlag(FLAGS_num_shards);
    o.worker.placement_file = absl::GetFlag(FLAGS_placement);
    o.worker.threads = absl::GetFlag(FLAGS_threads);
    o.worker.bf16_inputs = absl::GetFlag(FLAGS_bf16_inputs);
    o.device = absl::GetFlag(FLAGS_device);
    o.quantize = absl::GetFlag(FLAGS_quantize);
    o.gpu_lanes = absl::GetFlag(FLAGS_gpu_lanes);
    o.gpu_chunk_rows = absl::GetFlag(FLAGS_gpu_chunk_rows);
    o.data_port = absl::GetFlag(FLAGS_data_port);
    o.cuda_ipc = absl::GetFlag(FLAGS_cuda_ipc);
    o.fault_delay_ms = absl::GetFlag(FLAGS_fault_delay_ms);
    return o;
  }

  // The shard itself is checked when the worker loads it.
  absl::Status Validate() const {
    absl::StatusOr<int> gpu = ParseDeviceFlag(device);
    if (!gpu.ok()) return gpu.status();
#ifndef MOEMESH_WITH_CUDA
    if (*gpu >= 0) {
      return absl::InvalidArgumentError("--device " + device + ": this build has no CUDA (nvcc was not found)");
    }
#endif
    if (worker.model_dir.empty()) return absl::InvalidArgumentError("--model DIR is required");
    absl::StatusOr<QuantSpec> quant = ParseQuantSpec(quantize);
    if (!quant.ok()) return absl::InvalidArgumentError(absl::StrCat("--quantize: ", quant.status().message()));
    if (absl::Status st = CheckCpuOnlyFlags(device, *gpu, quantize, quant->kind != QuantKind::kNone,
                                            worker.bf16_inputs);
        !st.ok()) {
      return st;
    }
    if (fault_delay_ms < 0) return absl::InvalidArgumentError("--fault-delay-ms must not be negative");
    return absl::OkStatus();
  }

  // The GPU of --device (after Validate); -1 for the CPU.
  int gpu() const { return ParseDeviceFlag(device).value_or(-1); }
};

int Main(int argc, char** argv) {
  ServiceMain service_main("moemesh-expert", argc, argv,
                           "moemesh-expert --model DIR --shard-index I --num-shards N [--port P]");
  const Options options = Options::FromFlags();
  if (absl::Status st = options.Validate(); !st.ok()) return service_main.Fail(st, 2);

  const int gpu = options.gpu();  // the GPU in use (-1: none), for its metrics
  ExpertWorker::Options worker_options = options.worker;
  worker_options.quantize = *ParseQuantSpec(options.quantize);  // checked by Validate
#ifdef MOEMESH_WITH_CUDA
  if (gpu >= 0) {
    CudaExpertDevice::Options cuda;
    cuda.lanes = options.gpu_lanes;
    cuda.chunk_rows = options.gpu_chunk_rows;
    worker_options.device = CudaExpertDevice::Factory(gpu, cuda);
  }
#endif
  auto worker = ExpertWorker::Create(worker_options);
  if (!worker.ok()) return service_main.Fail(worker.status(), 2);
  ExpertServiceImpl service(worker->get());
  auto registry = std::make_shared<prometheus::Registry>();
  ExpertMetrics metrics(*registry);
  service.set_metrics(&metrics);
  service.set_fault_delay_ms(options.fault_delay_ms);
  std::unique_ptr<DeviceRowsServer> device_rows;
#ifdef MOEMESH_WITH_CUDA
  if (gpu >= 0 && options.cuda_ipc && (*worker)->groups_on_device()) {
    auto d = MakeCudaIpcServer(worker->get());
    if (!d.ok()) return service_main.Fail(d.status(), 1);
    device_rows = std::move(*d);
    service.set_device_rows(device_rows.get());
  }
#endif
  std::unique_ptr<FrameServer> frames;  // stops after the gRPC server (destroyed after Serve returns)
  // The raw data channel has no TLS: with TLS it is not offered, and
  // routers use the (encrypted) gRPC stream.
  if (MeshTls().server_tls() && options.data_port >= 0) {
    service_main.Warn("TLS is on: the raw data channel is not offered; routers use the gRPC stream");
  } else if (options.data_port >= 0) {
    auto f = FrameServer::Start(service_main.host(), options.data_port,
                                [&service](FrameSocket* s) { service.ServeFrames(s); });
    if (!f.ok()) return service_main.Fail(f.status(), 1);
    frames = std::move(*f);
    service.set_data_port(frames->port());
  }
  std::function<std::shared_ptr<prometheus::Collectable>()> gpu_metrics;
  if (gpu >= 0) gpu_metrics = [gpu] { return GpuCollector::Create({gpu}); };
  // Requests being computed finish; then the routers' streams are cancelled
  // (they resend to another replica).
  service_main.set_service_names({v1::ExpertService::service_full_name()});
  return service_main.Serve({&service}, registry, [&] { return service.busy(); }, gpu_metrics);
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) { return moemesh::Main(argc, argv); }
