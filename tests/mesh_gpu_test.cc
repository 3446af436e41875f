// The mesh with its expert workers on a GPU (`moemesh up --expert-device
// cuda`), and its router on the CPU or on the GPU (`--router-device`),
// against the single-process CPU engine: greedy tokens of the demo model
// (bf16 weights on both sides; the GPU's rows and activations are bf16 too).
// Labelled `gpu`; skips without a GPU.
//   MOEMESH_BIN=build/tools/moemesh/moemesh mesh_gpu_test
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/common/subprocess.h"
#include "core/kernels/cuda/cuda_runtime_util.h"
#include "core/metrics/http_get.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

std::string Moemesh() {
  const char* bin = std::getenv("MOEMESH_BIN");
  return bin ? bin : "build/tools/moemesh/moemesh";
}

std::string Output(const std::vector<std::string>& argv) {
  auto p = Subprocess::Start(argv);
  EXPECT_TRUE(p.ok()) << p.status();
  if (!p.ok()) return "";
  std::string out;
  while (true) {
    auto line = (*p)->WaitForLine("", absl::Seconds(120));
    if (!line.ok()) break;
    out += *line + "\n";
  }
  EXPECT_EQ((*p)->Stop(), 0) << argv[1];
  return out;
}

// The router on the CPU or on the GPU, the experts on two GPU workers; or
// ("local") the router on the GPU with the experts in it, on the same GPU;
// or ("ipc") the router on the GPU and one GPU worker holding every expert,
// their rows shared in GPU memory (the cuda-ipc transport).
class MeshGpuTest : public ::testing::TestWithParam<std::string> {};

TEST_P(MeshGpuTest, GreedyTokensEqualTheCpuEngine) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const bool local = GetParam() == "local", ipc = GetParam() == "ipc";
  std::vector<std::string> argv = {Moemesh(), "up", "--expert-shards=2", "--expert-device=cuda",
                                   "--router-device=" + GetParam()};
  if (local) argv = {Moemesh(), "up", "--expert-shards=0", "--router-device=cuda"};
  if (ipc) argv = {Moemesh(), "up", "--expert-shards=1", "--expert-device=cuda", "--router-device=cuda"};
  auto up = Subprocess::Start(argv);
  ASSERT_TRUE(up.ok());
  auto target = (*up)->WaitForLine("gateway listening on ", absl::Seconds(120));
  ASSERT_TRUE(target.ok()) << target.status();
  // A CUDA worker exports its GPU's memory and utilisation.
  std::string expert_metrics;
  for (const std::string& line : (*up)->lines()) {
    const std::string key = "metrics of expert shard 0 replica 0 at http://";
    if (line.find(key) != std::string::npos) expert_metrics = line.substr(line.find(key) + key.size());
  }
  // The router says how each shard's rows travel: in GPU memory only where
  // one GPU worker holds whole layers beside a GPU router.
  std::string transports;
  for (const std::string& line : (*up)->lines()) {
    if (line.find("expert shard ") != std::string::npos) transports += line + "\n";
  }
  (*up)->ForwardOutput(-1);
  ASSERT_EQ(expert_metrics.empty(), local);
  EXPECT_EQ(transports.find("cuda-ipc (rows stay on the GPU)") != std::string::npos, ipc) << transports;
  if (!local) {
    const std::string hostport = expert_metrics.substr(0, expert_metrics.find('/'));
    auto body = HttpGet(hostport.substr(0, hostport.find(':')),
                        std::stoi(hostport.substr(hostport.find(':') + 1)), "/metrics");
    ASSERT_TRUE(body.ok()) << body.status();
    EXPECT_NE(body->find("moemesh_gpu_memory_total_bytes{gpu=\"0\"}"), std::string::npos) << *body;
    EXPECT_NE(body->find("moemesh_gpu_utilization_ratio{gpu=\"0\"}"), std::string::npos);
  }
  // The GPU runs the experts' rows and activations in bf16, the CPU engine
  // in fp32, so greedy decoding may part where the two best tokens are
  // nearly tied. Up to the first difference the tokens must be equal; at it,
  // the CPU's token must be the GPU's runner-up within kTie nats, a step
  // that bf16 rounding decides either way (docs/PERFORMANCE.md lists them).
  constexpr double kTie = 0.05;
  for (const char* prompt : {"The meaning of life is", "明月", "Q: What is a friend?\nA:"}) {
    std::vector<std::string> flags = {"--prompt", prompt, "--max-new-tokens", "48", "--ignore-eos",
                                      "--temperature", "0", "--output", "json"};
    std::vector<std::string> cpu = {Moemesh(), "generate", "--model", "models/fortune-moe"};
    std::vector<std::string> gpu = {Moemesh(), "client", "generate", "--target", *target, "--logprobs", "2"};
    cpu.insert(cpu.end(), flags.begin(), flags.end());
    gpu.insert(gpu.end(), flags.begin(), flags.end());
    auto a = nlohmann::json::parse(Output(cpu), nullptr, false);
    auto b = nlohmann::json::parse(Output(gpu), nullptr, false);
    ASSERT_FALSE(a.is_discarded() || b.is_discarded());
    std::vector<int> want = a["token_ids"].get<std::vector<int>>(), got = b["token_ids"].get<std::vector<int>>();
    ASSERT_EQ(got.size(), want.size()) << prompt;
    if (local || ipc) {
      // The single-process engine on the GPU (`moemesh generate --device
      // cuda`) runs the same code on the same GPU as this router (and, over
      // cuda-ipc, as its worker): the same tokens exactly.
      std::vector<std::string> one = {Moemesh(), "generate", "--model", "models/fortune-moe", "--device", "cuda"};
      one.insert(one.end(), flags.begin(), flags.end());
      auto c = nlohmann::json::parse(Output(one), nullptr, false);
      ASSERT_FALSE(c.is_discarded());
      EXPECT_EQ(c["token_ids"].get<std::vector<int>>(), got) << prompt;
    }
    size_t same = 0;
    while (same < want.size() && want[same] == got[same]) ++same;
    if (same == want.size()) continue;
    const nlohmann::json& top = b["logprobs"][same]["top"];
    ASSERT_EQ(top.size(), 2u) << prompt;
    const double gap = top[0]["logprob"].get<double>() - top[1]["logprob"].get<double>();
    EXPECT_EQ(top[1]["token_id"].get<int>(), want[same]) << "\"" << prompt << "\" parts at token " << same;
    EXPECT_LT(gap, kTie) << "\"" << prompt << "\" parts at token " << same << " with a gap of " << gap;
    std::printf("router on %s, \"%s\": bf16 near-tie at token %zu (GPU %d, CPU %d, gap %.4f nats)\n",
                GetParam().c_str(), prompt, same, got[same], want[same], gap);
  }
  EXPECT_EQ((*up)->Stop(absl::Seconds(30)), 0);
}

INSTANTIATE_TEST_SUITE_P(RouterDevice, MeshGpuTest, ::testing::Values("cpu", "cuda", "local", "ipc"));

}  // namespace
}  // namespace moemesh
