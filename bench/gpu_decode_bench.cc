// The decode step of the single-process GPU engine (CudaForwardPass with the
// routed experts on the same GPU, rows never leaving device memory; small
// steps group the rows by expert on the GPU too and run as CUDA graphs)
// beside the same step three other ways: without graphs; with every
// layer's routing going to the host to be grouped there (the rows stay on
// the GPU; no graphs then); and with the experts' rows going to the host
// and back (the path every layer took before: GPU -> host -> expert device
// -> host -> GPU, without the network); and beside the step's memory
// roofline: the bytes a decode step must read (bench/roofline.h) over the
// measured copy bandwidth. Random-weight checkpoints at real layer shapes
// (bf16), written once under /tmp.
//
//   gpu_decode_bench [--shapes mixtral,qwen3,deepseek] [--layers 8] [--deepseek-layers 3]
//                    [--batches 1,8,32,64] [--steps 24] [--ipc on|off] [--ipc-sync auto|counter|gpu|host]
//
// (Mixtral and Qwen3 by default; DeepSeek-V3's shape writes 23 GB per MoE
// layer to /tmp.)
//
// And, with --ipc on (the default), the mesh on the same GPU: the same
// forward pass with its experts in a moemesh-expert process (started here;
// MOEMESH_EXPERT_BIN, or beside MOEMESH_BIN's CLI), the rows shared in GPU
// memory (the cuda-ipc transport, its GPU work ordered as --ipc-sync says,
// as the router's --cuda-ipc-sync; with counters its decode steps run as
// CUDA graphs too, their requests sent to the worker before each launch;
// otherwise eager).
//
// One row per shape and batch size: step ms of each path, the first's
// speedup over the next three, the one process's tokens/s over the mesh's
// ("ipc/1p", the mesh's share), roofline ms and the first's share of it,
// and the mesh's mean round trip a request ("ipc rt us": from its send to
// its answer read, which the step thread waits out; "ipc gr": the share of
// the mesh's steps that ran as graphs).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/roofline.h"
#include "core/common/subprocess.h"
#include "core/engine/cuda/cuda_forward_pass.h"
#include "core/engine/kv_cache.h"
#include "core/experts/cuda/cuda_expert_device.h"
#include "core/experts/local_expert_executor.h"
#include "core/kernels/cuda/ceilings.h"
#include "core/kernels/cuda/cuda_runtime_util.h"
#include "core/model/config.h"
#include "core/model/random_checkpoint.h"
#include "core/model/safetensors.h"
#include "core/model/weights.h"
#include "services/expert_client/cuda_ipc_transport.h"
#include "services/expert_client/remote_expert_executor.h"

namespace moemesh {
namespace {

// A shape of the bench: the checkpoint's, named.
struct Shape : RandomMoeShape {
  std::string name;
};

Shape Mixtral(int layers) { return {MixtralShape(layers), "mixtral"}; }
Shape Qwen3(int layers) { return {Qwen3MoeShape(layers), "qwen3"}; }

// Exits on failure: a benchmark without its model has nothing to run.
template <typename S>
std::string Written(const S& shape, const std::string& dir) {
  absl::StatusOr<bool> wrote = WriteRandomCheckpoint(shape, dir);
  if (!wrote.ok()) {
    std::fprintf(stderr, "gpu_decode_bench: cannot write the model to %s: %s\n", dir.c_str(),
                 std::string(wrote.status().message()).c_str());
    std::exit(1);
  }
  return dir;
}

// The checkpoint (core/model/random_checkpoint.h), unless the last run
// left the same one there.
std::string WriteModel(const Shape& s) {
  return Written<RandomMoeShape>(s, absl::StrCat("/tmp/moemesh_gpu_bench_", s.name, "_", s.layers, "l"));
}

// DeepSeek-V3's shape with `layers` layers, the first dense; about 23 GB
// per MoE layer. The same sizes as its roofline (bench/roofline.h).
std::string WriteDeepSeek(int layers) {
  return Written(DeepSeekV3Shape(layers), absl::StrCat("/tmp/moemesh_gpu_bench_deepseek_", layers, "l"));
}

// The same experts, announced as host-only: the forward pass copies each
// layer's rows to the host, the device copies them back to compute, and the
// rows return the same way (the path before rows stayed on the device).
class ThroughHost : public ExpertExecutor {
 public:
  explicit ThroughHost(ExpertExecutor* inner) : inner_(inner) {}
  absl::Status Execute(const ExpertBatch& batch, float* out) override { return inner_->Execute(batch, out); }

 private:
  ExpertExecutor* inner_;
};

// The mesh's experts for `dir`: a moemesh-expert on GPU 0, reached over
// cuda-ipc. Null (and why, on stderr) where it cannot start or connect, as
// where the GPU has no room for a second copy of the experts.
struct MeshExperts {
  std::unique_ptr<Subprocess> worker;
  std::unique_ptr<RemoteExpertExecutor> executor;
  // Each request's time from send to answer read (the hosts' round trip,
  // which the router's step thread waits out), summed since the reset.
  std::shared_ptr<std::pair<double, int64_t>> round_trips = std::make_shared<std::pair<double, int64_t>>();
};

MeshExperts StartMeshExperts(const std::string& dir, int hidden, int slots, CudaIpcTransport::Sync sync) {
  MeshExperts m;
  auto p = Subprocess::Start({ServiceBinaryForTests("moemesh-expert", "MOEMESH_EXPERT_BIN"), "--model", dir,
                              "--device", "cuda", "--port", "0", "--metrics-port", "-1"});
  absl::StatusOr<std::string> line = p.ok() ? (*p)->WaitForLine("listening on ", absl::Minutes(10)) : p.status();
  if (!line.ok()) {
    std::fprintf(stderr, "gpu_decode_bench: no mesh column: the expert worker: %s\n",
                 std::string(line.status().message()).c_str());
    return m;
  }
  (*p)->ForwardOutput(2);
  RemoteExpertExecutor::Options options;
  options.cuda_device = 0;
  options.device_rows = CudaIpcTransport::Wrapper(0, slots, 256, sync);
  options.graph_steps = true;  // with counters: decode steps as graphs
  options.warn = [](const std::string& w) { std::fprintf(stderr, "gpu_decode_bench: %s\n", w.c_str()); };
  auto r = RemoteExpertExecutor::Connect({{*line}}, hidden, options);
  if (!r.ok() || (*r)->cuda_device() != 0) {
    std::fprintf(stderr, "gpu_decode_bench: no mesh column: %s\n",
                 r.ok() ? "the rows would go through the host" : std::string(r.status().message()).c_str());
    return m;
  }
  m.worker = std::move(*p);
  m.executor = std::move(*r);
  m.executor->set_dispatch_observer([rt = m.round_trips](const std::string&, double seconds) {
    rt->first += seconds;
    ++rt->second;
  });
  return m;
}

std::vector<int> ParseInts(const std::string& s) {
  std::vector<int> out;
  for (absl::string_view p : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    int v;
    if (absl::SimpleAtoi(p, &v)) out.push_back(v);
  }
  return out;
}

int Run(int argc, char** argv) {
  std::vector<std::string> shapes = {"mixtral", "qwen3"};
  std::vector<int> batches = {1, 8, 32, 64};
  int layers = 8, deepseek_layers = 3, steps = 24;
  bool ipc = true;
  CudaIpcTransport::Sync sync = CudaIpcTransport::Sync::kAuto;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--shapes") {
      shapes = absl::StrSplit(value, ',', absl::SkipEmpty());
    } else if (flag == "--layers") {
      layers = std::atoi(value.c_str());
    } else if (flag == "--deepseek-layers") {
      deepseek_layers = std::atoi(value.c_str());
    } else if (flag == "--batches") {
      batches = ParseInts(value);
    } else if (flag == "--steps") {
      steps = std::atoi(value.c_str());
    } else if (flag == "--ipc") {
      ipc = value == "on";
    } else if (flag == "--ipc-sync") {
      auto s = CudaIpcTransport::ParseSync(value);
      if (!s.ok()) {
        std::fprintf(stderr, "gpu_decode_bench: %s\n", std::string(s.status().message()).c_str());
        return 2;
      }
      sync = *s;
    } else {
      std::fprintf(stderr, "gpu_decode_bench: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (CudaDeviceCount() == 0) {
    std::fprintf(stderr, "gpu_decode_bench: no CUDA device\n");
    return 1;
  }
  auto bw = MeasureCopyBandwidth(size_t{1} << 30, kSustainedWarmUpSeconds);
  if (!bw.ok()) {
    std::fprintf(stderr, "gpu_decode_bench: %s\n", std::string(bw.status().message()).c_str());
    return 1;
  }
  constexpr int kPrompt = 180;  // with the decoded tokens, about roofline.h's 192 positions on average
  std::printf("copy bandwidth %.2f TB/s; prompts of %d tokens, then %d decode steps timed per batch\n", *bw / 1e12,
              kPrompt, steps);
  std::printf("%-8s %6s %6s %10s %10s %10s %10s %10s %8s %8s %8s %7s %11s %9s %10s %7s\n", "shape", "layers", "batch",
              "graphs ms", "eager ms", "host-gr ms", "v.host ms", "ipc ms", "x eager", "x h.-gr", "x v.host", "ipc/1p",
              "roofline ms", "of roofl", "ipc rt us", "ipc gr");
  for (const std::string& name : shapes) {
    const bool deepseek = name == "deepseek";
    const Shape s = name == "qwen3" ? Qwen3(layers) : Mixtral(layers);
    const std::string dir = deepseek ? WriteDeepSeek(deepseek_layers) : WriteModel(s);
    const int shape_layers = deepseek ? deepseek_layers : s.layers;
    auto config = LoadModelConfig(dir);
    auto ckpt = Checkpoint::Open(dir);
    if (!config.ok() || !ckpt.ok()) {
      std::fprintf(stderr, "gpu_decode_bench: %s\n", std::string((config.ok() ? ckpt.status() : config.status()).message()).c_str());
      return 1;
    }
    auto w = LoadWeights(std::move(*ckpt), *config);
    if (!w.ok()) {
      std::fprintf(stderr, "gpu_decode_bench: %s\n", std::string(w.status().message()).c_str());
      return 1;
    }
    auto weights = std::make_shared<const ModelWeights>(std::move(*w));
    const int max_batch = *std::max_element(batches.begin(), batches.end());
    const int block = 16, blocks = max_batch * ((kPrompt + steps + 2 * block) / block);
    CudaForwardPass::Options graphs, eager, host_grouping;
    graphs.cuda_graphs = true;
    eager.cuda_graphs = false;
    host_grouping.device_grouping_max_tokens = 0;
    auto pass = CudaForwardPass::Create(*config, weights, block, blocks, 0, graphs);
    auto pass_eager = CudaForwardPass::Create(*config, weights, block, blocks, 0, eager);
    auto pass_host_grouping = CudaForwardPass::Create(*config, weights, block, blocks, 0, host_grouping);
    auto device = CudaExpertDevice::Create(*config, *weights, 0);
    for (const absl::Status& st : {pass.status(), pass_eager.status(), pass_host_grouping.status(), device.status()}) {
      if (!st.ok()) {
        std::fprintf(stderr, "gpu_decode_bench: %s\n", std::string(st.message()).c_str());
        return 1;
      }
    }
    LocalExpertExecutor in_place(std::move(*device), config->num_experts);
    ThroughHost via_host(&in_place);
    MeshExperts mesh = ipc ? StartMeshExperts(dir, config->hidden_size, config->num_experts_per_tok, sync) : MeshExperts{};
    for (int n : batches) {
      double ms[5] = {0, 0, 0, 0, 0}, round_trip_us = 0, ipc_graphed = 0;
      for (int path = 0; path < 5; ++path) {
        if (path == 4 && !mesh.executor) break;
        ExpertExecutor* experts = path == 3   ? static_cast<ExpertExecutor*>(&via_host)
                                  : path == 4 ? static_cast<ExpertExecutor*>(mesh.executor.get())
                                              : &in_place;
        ForwardPass* fp = path == 1 ? pass_eager->get() : path == 2 ? pass_host_grouping->get() : pass->get();
        KvCache cache(config->num_layers, fp->kv_k_width(), fp->kv_v_width(), block, blocks);
        std::vector<KvSequence> seqs(n);
        std::vector<int> prompt(kPrompt);
        for (int i = 0; i < kPrompt; ++i) prompt[i] = (i * 7919 + 13) % config->vocab_size;
        bool ok = true;
        for (KvSequence& seq : seqs) {
          ok = ok && cache.Reserve(&seq, kPrompt + steps + 2).ok();
          ForwardItem item{&seq, prompt, false};
          ok = ok && fp->Forward({&item, 1}, &cache, experts, nullptr).ok();
        }
        std::vector<double> times;
        std::vector<int> tokens(n);
        if (path == 4) *mesh.round_trips = {0, 0};
        // The mesh's steps replayed as graphs (counters: their requests sent ahead).
        const int replayed_before = static_cast<const CudaForwardPass*>(pass->get())->graph_stats().replayed;
        for (int step = 0; ok && step < steps + 2; ++step) {
          std::vector<ForwardItem> items;
          for (int i = 0; i < n; ++i) {
            tokens[i] = (step * 31 + i * 17) % config->vocab_size;
            items.push_back({&seqs[i], absl::MakeConstSpan(&tokens[i], 1), false});
          }
          const auto t0 = std::chrono::steady_clock::now();
          ok = fp->Forward(items, &cache, experts, nullptr).ok();  // waits for the step
          if (step >= 2) times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
        for (KvSequence& seq : seqs) cache.Release(&seq);
        if (!ok) {
          std::fprintf(stderr, "gpu_decode_bench: a step failed (%s, batch %d)\n", name.c_str(), n);
          return 1;
        }
        std::sort(times.begin(), times.end());
        ms[path] = 1e3 * times[times.size() / 2];
        if (path == 4) {
          const int replayed = static_cast<const CudaForwardPass*>(pass->get())->graph_stats().replayed;
          ipc_graphed = static_cast<double>(replayed - replayed_before) / (steps + 2);
        }
        if (path == 4 && mesh.round_trips->second > 0) {
          round_trip_us = 1e6 * mesh.round_trips->first / mesh.round_trips->second;
        }
      }
      const RooflineShape r{s.layers, s.hidden, s.heads, s.kv_heads, s.head_dim, s.experts, s.top_k, s.expert_width,
                            s.vocab};
      const double bytes = deepseek ? DecodeStepBytes(DeepSeekV3Roofline(deepseek_layers), n, kRooflineContext)
                                    : DecodeStepBytes(r, n, kRooflineContext);
      const double roof_ms = 1e3 * bytes / *bw;
      const std::string ipc_ms = ms[4] > 0 ? absl::StrFormat("%10.3f", ms[4]) : absl::StrFormat("%10s", "-");
      const std::string share = ms[4] > 0 ? absl::StrFormat("%6.2fx", ms[0] / ms[4]) : absl::StrFormat("%7s", "-");
      std::printf("%-8s %6d %6d %10.3f %10.3f %10.3f %10.3f %s %7.2fx %7.2fx %7.2fx %s %11.3f %8.0f%% %10.1f %6.0f%%\n",
                  name.c_str(), shape_layers, n, ms[0], ms[1], ms[2], ms[3], ipc_ms.c_str(), ms[1] / ms[0],
                  ms[2] / ms[0], ms[3] / ms[0], share.c_str(), roof_ms, 100 * roof_ms / ms[0], round_trip_us,
                  100 * ipc_graphed);
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) { return moemesh::Run(argc, argv); }
