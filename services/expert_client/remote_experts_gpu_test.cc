// Every placement of the dense part and the routed experts that involves a
// GPU, through the mesh's expert path, on every fixture: the engine with
// its experts on a moemesh-expert process (RemoteExpertExecutor, as a
// router runs them) against the same engine with the same experts in this
// process, on the same devices. The worker runs the kernels this process
// would, on the rows this process would give them, so the two agree to
// within f32 rounding of the sums (1e-5 of the logits' norm) and decode the
// same greedy tokens. With cuda_forward_pass_test, which checks each
// in-process placement against the CPU engine (routing recorded on both
// sides), that covers router and experts on CPU or GPU, in one process or
// two, on every fixture. Placements:
//   cpu-router/gpu-worker    the rows through the host, to a GPU worker
//   gpu-router/gpu-worker    the rows in GPU memory (cuda-ipc), ordered by
//                            interprocess events (--cuda-ipc-sync gpu)
//   gpu-router/gpu-worker-counter  the same, ordered by counters (auto)
//   gpu-router/gpu-worker-graphs   with counters, decode steps as CUDA graphs
//                            whose requests are replayed
//   gpu-router/gpu-via-host  the rows through the host, to a GPU worker
//   gpu-router/cpu-worker    the rows through the host, to a CPU worker
// Labelled `gpu`; skips without a GPU.
//   MOEMESH_EXPERT_BIN=build/services/expert/moemesh-expert remote_experts_gpu_test
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_join.h"
#include "core/common/subprocess.h"
#include "core/engine/cuda/cuda_forward_pass.h"
#include "core/engine/engine.h"
#include "core/experts/cuda/cuda_expert_device.h"
#include "core/experts/local_expert_executor.h"
#include "core/kernels/cuda/cuda_runtime_util.h"
#include "core/model/config.h"
#include "core/model/safetensors.h"
#include "core/model/weights.h"
#include "core/tensor/rel_error.h"
#include "gtest/gtest.h"
#include "services/expert_client/cuda_ipc_transport.h"
#include "services/expert_client/remote_expert_executor.h"

namespace moemesh {
namespace {

// The experts announced as host-only: a GPU forward pass hands them its
// rows through the host, as it does to a worker without cuda-ipc.
class ThroughHost : public ExpertExecutor {
 public:
  explicit ThroughHost(std::unique_ptr<ExpertExecutor> inner) : inner_(std::move(inner)) {}
  absl::Status Execute(const ExpertBatch& batch, float* out) override { return inner_->Execute(batch, out); }

 private:
  std::unique_ptr<ExpertExecutor> inner_;
};

// One worker per model and device, started once and shared by the cases.
std::string WorkerAddress(const std::string& dir, const std::string& device) {
  static auto* workers = new std::map<std::string, std::pair<std::unique_ptr<Subprocess>, std::string>>;
  auto& w = (*workers)[dir + "|" + device];
  if (w.first) return w.second;
  auto p = Subprocess::Start({ServiceBinaryForTests("moemesh-expert", "MOEMESH_EXPERT_BIN"), "--model", dir,
                              "--device", device, "--port", "0", "--metrics-port", "-1"});
  EXPECT_TRUE(p.ok()) << p.status();
  if (!p.ok()) return "";
  auto line = (*p)->WaitForLine("listening on ", absl::Seconds(120));
  EXPECT_TRUE(line.ok()) << dir << " on " << device << ": " << line.status();
  if (!line.ok()) return "";
  (*p)->ForwardOutput(2);
  w = {std::move(*p), *line};
  return w.second;
}

struct Sides {
  std::shared_ptr<const ModelWeights> experts;  // the in-process side's
  std::unique_ptr<Engine> local, remote;
  const CudaForwardPass* remote_pass = nullptr;  // the remote engine's, on a GPU router
};

Sides MakeSides(const std::string& dir, const std::string& placement) {
  Sides s;
  const bool gpu_router = placement.rfind("gpu-router", 0) == 0;
  const bool gpu_experts = placement.find("cpu-worker") == std::string::npos;
  const bool graphs = placement == "gpu-router/gpu-worker-graphs";
  const bool counter = graphs || placement == "gpu-router/gpu-worker-counter";
  const bool ipc = placement == "gpu-router/gpu-worker" || counter;
  auto config = LoadModelConfig(dir);
  auto ckpt = Checkpoint::Open(dir);
  EXPECT_TRUE(config.ok() && ckpt.ok());
  if (!config.ok() || !ckpt.ok()) return s;
  WeightLoadOptions load;
  load.load_dense = false;
  auto w = LoadWeights(std::move(*ckpt), *config, load);
  EXPECT_TRUE(w.ok()) << w.status();
  if (!w.ok()) return s;
  s.experts = std::make_shared<const ModelWeights>(std::move(*w));
  std::unique_ptr<ExpertExecutor> local;
  if (gpu_experts) {
    auto device = CudaExpertDevice::Create(*config, *s.experts, 0);
    EXPECT_TRUE(device.ok()) << device.status();
    if (!device.ok()) return s;
    local = std::make_unique<LocalExpertExecutor>(std::move(*device), config->num_experts);
  } else {
    local = std::make_unique<LocalExpertExecutor>(&s.experts->experts, nullptr);
  }
  if (gpu_router && !ipc) local = std::make_unique<ThroughHost>(std::move(local));

  const std::string address = WorkerAddress(dir, gpu_experts ? "cuda" : "cpu");
  if (address.empty()) return s;
  RemoteExpertExecutor::Options options;
  if (ipc) {
    options.cuda_device = 0;
    options.device_rows = CudaIpcTransport::Wrapper(
        0, config->num_experts_per_tok, 256, counter ? CudaIpcTransport::Sync::kAuto : CudaIpcTransport::Sync::kGpu);
    options.warn = [](const std::string& w) { ADD_FAILURE() << w; };
    options.graph_steps = graphs;
  }
  auto remote = RemoteExpertExecutor::Connect({{address}}, config->hidden_size, options);
  EXPECT_TRUE(remote.ok()) << remote.status();
  if (!remote.ok()) return s;
  EXPECT_EQ((*remote)->cuda_device(), ipc ? 0 : -1) << "rows in GPU memory exactly over cuda-ipc";

  auto make = [&](std::unique_ptr<ExpertExecutor> experts, const CudaForwardPass** pass) -> std::unique_ptr<Engine> {
    EngineOptions o;
    o.kv_cache_tokens = 4096;
    if (gpu_router) {
      CudaForwardPass::Options options;
      // Steps that talk to another process are captured where they replay
      // (counters); the rest run eager on both sides.
      // The in-process side runs eager: replayed steps are held to it.
      options.cuda_graphs = graphs && pass != nullptr;
      // Experts away over cuda-ipc group on the GPU at any size (the
      // prompt's 40 tokens too): here as well, so both run the same kernels.
      if (ipc) options.device_grouping_max_tokens = 1 << 20;
      ForwardPassFactory factory = CudaForwardPass::Factory(0, options);
      o.forward_pass = [factory, pass](const ModelConfig& c, std::shared_ptr<const ModelWeights> w, int block,
                                       int blocks) {
        auto p = factory(c, std::move(w), block, blocks);
        if (p.ok() && pass != nullptr) *pass = static_cast<const CudaForwardPass*>(p->get());
        return p;
      };
    }
    auto e = Engine::Create(dir, o, std::move(experts));
    EXPECT_TRUE(e.ok()) << dir << ": " << e.status();
    return e.ok() ? std::move(*e) : nullptr;
  };
  s.local = make(std::move(local), nullptr);
  s.remote = make(std::move(*remote), &s.remote_pass);
  return s;
}

class RemoteExpertsGpuTest : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {
 protected:
  void SetUp() override {
    if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_P(RemoteExpertsGpuTest, EqualsTheExpertsInProcess) {
  const auto& [dir, placement] = GetParam();
  Sides s = MakeSides(dir, placement);
  ASSERT_TRUE(s.local && s.remote);
  const int vocab = s.local->config().vocab_size;
  // 40 positions: past every fixture's max_position_embeddings where its
  // rope depends on it (dynamic NTK, YaRN).
  std::mt19937 rng(5);
  std::vector<int> prompt(40);
  for (int& t : prompt) t = static_cast<int>(rng() % vocab);
  auto want = s.local->Score(prompt), got = s.remote->Score(prompt);
  ASSERT_TRUE(want.ok() && got.ok()) << want.status() << got.status();
  const double err = RelError(*got, *want);
  EXPECT_LT(err, 1e-5) << dir << ", " << placement;
  GenerateParams p;
  p.sampling.temperature = 0;
  p.max_new_tokens = 16;
  p.ignore_eos = true;
  auto a = s.local->Generate(prompt, p), b = s.remote->Generate(prompt, p);
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  EXPECT_EQ(b->tokens, a->tokens) << dir << ", " << placement << ": in process " << absl::StrJoin(a->tokens, " ")
                                   << "; remote " << absl::StrJoin(b->tokens, " ");
  if (placement == "gpu-router/gpu-worker-graphs") {
    ASSERT_NE(s.remote_pass, nullptr);
    const CudaForwardPass::GraphStats& g = s.remote_pass->graph_stats();
    EXPECT_EQ(g.failed, 0) << dir;
    EXPECT_EQ(g.stale, 0) << dir;
    // Past the trained length, dynamic NTK's steps run as usual.
    if (s.remote->config().rope.type != RopeType::kDynamic) {
      EXPECT_GE(g.replayed, 10) << dir << ": the decode steps replay, their requests sent ahead";
    }
  }
  std::printf("%s, %s: prompt logits within %.1e of the experts in process; greedy tokens %s; %d graphs replayed\n",
              dir.c_str(), placement.c_str(), err, b->tokens == a->tokens ? "equal" : "DIFFER",
              s.remote_pass != nullptr ? s.remote_pass->graph_stats().replayed : 0);
}

// FP8 rows and bf16 answers (--expert-rows fp8 --expert-answers bf16) to a
// GPU worker through the host: results within FP8's rounding of the exact
// hop's (each row off by at most 2^-4 of its group's largest; the sums over
// the hidden size average that down), and the KV cache's name says how.
TEST(RemoteExpertsGpuWireTest, Fp8RowsAndBf16AnswersToAGpuWorker) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const std::string dir = "models/fortune-moe";
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  const std::string address = WorkerAddress(dir, "cuda");
  ASSERT_FALSE(address.empty());
  RemoteExpertExecutor::Options options;
  auto exact = RemoteExpertExecutor::Connect({{address}}, config->hidden_size, options);
  options.rows = RemoteExpertExecutor::Rows::kFp8;
  options.answers = RemoteExpertExecutor::Answers::kBf16;
  auto lossy = RemoteExpertExecutor::Connect({{address}}, config->hidden_size, options);
  ASSERT_TRUE(exact.ok() && lossy.ok()) << exact.status() << lossy.status();
  EXPECT_EQ((*exact)->ResultsTag(), "shard 0: gpu");
  EXPECT_EQ((*lossy)->ResultsTag(), "shard 0: gpu rows=fp8 answers=bf16");
  const int h = config->hidden_size, tokens = 33, slots = config->num_experts_per_tok;
  std::mt19937 rng(9);
  std::normal_distribution<float> d(0, 1);
  std::vector<float> hidden(static_cast<size_t>(tokens) * h), weights(static_cast<size_t>(tokens) * slots, 0.5f);
  for (float& x : hidden) x = d(rng);
  std::vector<int> ids;
  for (int t = 0; t < tokens; ++t) {
    for (int j = 0; j < slots; ++j) ids.push_back((t + 3 * j) % config->num_experts);
  }
  ExpertBatch batch{0, tokens, h, hidden.data(), slots, ids.data(), weights.data()};
  std::vector<float> want(hidden.size()), got(hidden.size());
  ASSERT_TRUE((*exact)->Execute(batch, want.data()).ok());
  ASSERT_TRUE((*lossy)->Execute(batch, got.data()).ok());
  const double err = RelError(got, want);
  EXPECT_GT(err, 0) << "the rows were not rounded";
  EXPECT_LT(err, 5e-2);
  std::printf("FP8 rows and bf16 answers to a GPU worker: within %.2e of f32 rows and answers\n", err);
}

std::vector<std::string> Models() {
  return {"models/fortune-moe",           "tests/fixtures/mixtral",          "tests/fixtures/mixtral_llama3",
          "tests/fixtures/mixtral_sliding", "tests/fixtures/qwen2_moe",        "tests/fixtures/qwen2_moe_linear",
          "tests/fixtures/qwen2_moe_sliding", "tests/fixtures/qwen3_moe",      "tests/fixtures/qwen3_moe_sliding",
          "tests/fixtures/qwen3_moe_yarn", "tests/fixtures/qwen3_moe_dynamic", "tests/fixtures/olmoe",
          "tests/fixtures/olmoe_dynamic",  "tests/fixtures/deepseek_v3",     "tests/fixtures/deepseek_v3_nolora"};
}

INSTANTIATE_TEST_SUITE_P(Models, RemoteExpertsGpuTest,
                         ::testing::Combine(::testing::ValuesIn(Models()),
                                            ::testing::Values("cpu-router/gpu-worker", "gpu-router/gpu-worker",
                                                              "gpu-router/gpu-worker-counter",
                                                              "gpu-router/gpu-worker-graphs", "gpu-router/gpu-via-host",
                                                              "gpu-router/cpu-worker")));

}  // namespace
}  // namespace moemesh
