// The cuda-ipc transport against the experts in this process: a real
// moemesh-expert on GPU 0 (another process, as CUDA IPC needs), reached by a
// RemoteExpertExecutor whose rows and routing stay in GPU memory, gives the
// rows LocalExpertExecutor gives on the same GPU with the same kernels.
// Labelled `gpu`; skips without a GPU.
//   MOEMESH_BIN=build/tools/moemesh/moemesh cuda_ipc_transport_test
#include "services/expert_client/cuda_ipc_transport.h"

#include <signal.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/common/status_macros.h"
#include "core/common/subprocess.h"
#include "core/experts/cuda/cuda_expert_device.h"
#include "core/experts/local_expert_executor.h"
#include "core/kernels/cuda/cuda_ipc.h"
#include "core/kernels/cuda/cuda_runtime_util.h"
#include "core/model/config.h"
#include "core/model/safetensors.h"
#include "core/model/weights.h"
#include "gtest/gtest.h"
#include "moemesh/v1/expert.pb.h"
#include "services/expert_client/remote_expert_executor.h"

namespace moemesh {
namespace {

constexpr char kModel[] = "models/fortune-moe";

// A worker with every expert of the demo model on GPU 0; `data_port` -1
// leaves the messages to the gRPC stream.
std::unique_ptr<Subprocess> StartWorker(int data_port, std::string* address) {
  auto p = Subprocess::Start({ServiceBinaryForTests("moemesh-expert", "MOEMESH_EXPERT_BIN"), "--model", kModel, "--device", "cuda", "--port", "0",
                              "--metrics-port", "-1", "--data-port", std::to_string(data_port)});
  EXPECT_TRUE(p.ok()) << p.status();
  if (!p.ok()) return nullptr;
  auto line = (*p)->WaitForLine("listening on ", absl::Seconds(120));
  EXPECT_TRUE(line.ok()) << line.status();
  if (!line.ok()) return nullptr;
  *address = *line;
  (*p)->ForwardOutput(2);
  return std::move(*p);
}

// Whether process `pid` is stopped (state T in /proc/PID/stat) within 5 s:
// kill(2) returns before a signal takes effect.
bool WaitUntilStopped(int pid) {
  for (int i = 0; i < 500; ++i) {
    std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
    std::string line;
    std::getline(stat, line);
    const size_t close = line.rfind(')');
    if (close != std::string::npos && close + 2 < line.size() && line[close + 2] == 'T') return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return false;
}

// The routing of `n` tokens to `slots` distinct experts each, in device
// memory beside its host copy.
struct Batch {
  std::vector<float> hidden, weights;
  std::vector<int> ids;
  std::unique_ptr<DeviceBuffer> d_hidden, d_ids, d_weights;
};

Batch RandomBatch(int n, int h, int experts, int slots, std::mt19937* rng) {
  Batch b;
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> uniform(0.05f, 1.f);
  b.hidden.resize(static_cast<size_t>(n) * h);
  for (float& v : b.hidden) v = normal(*rng);
  std::vector<int> all(experts);
  std::iota(all.begin(), all.end(), 0);
  for (int t = 0; t < n; ++t) {
    std::shuffle(all.begin(), all.end(), *rng);
    for (int j = 0; j < slots; ++j) {
      b.ids.push_back(all[j]);
      b.weights.push_back(uniform(*rng));
    }
  }
  auto upload = [](const void* p, size_t bytes) {
    auto buf = DeviceBuffer::Allocate(bytes);
    EXPECT_TRUE(buf.ok() && (*buf)->CopyFrom(p, bytes).ok());
    return buf.ok() ? std::move(*buf) : nullptr;
  };
  b.d_hidden = upload(b.hidden.data(), b.hidden.size() * sizeof(float));
  b.d_ids = upload(b.ids.data(), b.ids.size() * sizeof(int));
  b.d_weights = upload(b.weights.data(), b.weights.size() * sizeof(float));
  return b;
}

// Executes `ex` on `b` for `layer`, the rows on the device and the routing
// there too (`routed`) or on the host; returns the output rows.
std::vector<float> Execute(ExpertExecutor* ex, const Batch& b, int layer, int n, int h, int slots, bool routed) {
  ExpertBatch batch{layer, n, h, b.d_hidden->as<float>(), slots,
                    routed ? b.d_ids->as<int>() : b.ids.data(), routed ? b.d_weights->as<float>() : b.weights.data()};
  batch.on_device = true;
  batch.routing_on_device = routed;
  auto out = DeviceBuffer::Allocate(static_cast<size_t>(n) * h * sizeof(float));
  EXPECT_TRUE(out.ok());
  EXPECT_TRUE((*out)->Fill(0xff).ok());  // NaNs, unless written
  absl::Status st = ex->Execute(batch, (*out)->as<float>());
  EXPECT_TRUE(st.ok()) << st;
  std::vector<float> host(static_cast<size_t>(n) * h);
  EXPECT_TRUE(CudaSynchronize(nullptr).ok());
  EXPECT_TRUE((*out)->CopyTo(host.data(), host.size() * sizeof(float)).ok());
  return host;
}

// The messages over the raw data channel (`data_port` 0: a free one) or the
// gRPC stream (-1: no data channel); the GPU work ordered by `sync`.
struct Control {
  int data_port;
  CudaIpcTransport::Sync sync;
};

class CudaIpcTransportTest : public ::testing::TestWithParam<Control> {
 protected:
  void SetUp() override {
    if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
    auto config = LoadModelConfig(kModel);
    auto ckpt = Checkpoint::Open(kModel);
    ASSERT_TRUE(config.ok() && ckpt.ok());
    config_ = *config;
    WeightLoadOptions load;
    load.load_dense = false;
    auto w = LoadWeights(std::move(*ckpt), config_, load);
    ASSERT_TRUE(w.ok()) << w.status();
    weights_ = std::make_unique<ModelWeights>(std::move(*w));
    auto device = CudaExpertDevice::Create(config_, *weights_, 0);
    ASSERT_TRUE(device.ok()) << device.status();
    local_ = std::make_unique<LocalExpertExecutor>(std::move(*device), config_.num_experts);
    worker_ = StartWorker(GetParam().data_port, &address_);
    ASSERT_NE(worker_, nullptr);
  }

  absl::StatusOr<std::unique_ptr<RemoteExpertExecutor>> Connect(std::vector<std::string>* warnings,
                                                                 int receive_timeout_ms = 0) {
    RemoteExpertExecutor::Options options;
    options.receive_timeout_ms = receive_timeout_ms;
    options.cuda_device = 0;
    options.device_rows =
        CudaIpcTransport::Wrapper(0, config_.num_experts_per_tok, /*initial_tokens=*/64, GetParam().sync);
    options.warn = [warnings](const std::string& w) { warnings->push_back(w); };
    options.graph_steps = true;
    return RemoteExpertExecutor::Connect({{address_}}, config_.hidden_size, options);
  }

  ModelConfig config_;
  std::unique_ptr<ModelWeights> weights_;
  std::unique_ptr<LocalExpertExecutor> local_;
  std::unique_ptr<Subprocess> worker_;
  std::string address_;
};

// Whether a connection of this sync counts (kAuto is kCounter).
bool Counts(CudaIpcTransport::Sync sync) {
  return (sync == CudaIpcTransport::Sync::kCounter || sync == CudaIpcTransport::Sync::kAuto) &&
         StreamMemOpsSupported(0);
}

// Decode-sized batches (grouped by the worker on its GPU) and prefill-sized
// ones (grouped here, combined there), past the buffers' first size: the
// same rows as the experts in this process, bit for bit (the same kernels
// in the same order on the same GPU).
TEST_P(CudaIpcTransportTest, RowsEqualTheExpertsInThisProcess) {
  std::vector<std::string> warnings;
  auto remote = Connect(&warnings);
  ASSERT_TRUE(remote.ok()) << remote.status();
  EXPECT_TRUE(warnings.empty()) << warnings.front();
  ASSERT_EQ((*remote)->transports(), std::vector<std::string>{"cuda-ipc"});
  EXPECT_EQ((*remote)->cuda_device(), 0);
  EXPECT_TRUE((*remote)->groups_on_device());
  EXPECT_FALSE((*remote)->capturable());
  const int h = config_.hidden_size, slots = config_.num_experts_per_tok;
  std::mt19937 rng(7);
  int compared = 0;
  for (int layer = 0; layer < config_.num_layers; ++layer) {
    if (!config_.is_moe_layer[layer]) continue;
    for (const auto& [n, routed] : {std::pair{1, true}, {9, true}, {32, true}, {40, false}, {150, false}}) {
      const Batch b = RandomBatch(n, h, config_.num_experts, slots, &rng);
      const std::vector<float> want = Execute(local_.get(), b, layer, n, h, slots, routed);
      const std::vector<float> got = Execute(remote->get(), b, layer, n, h, slots, routed);
      ASSERT_EQ(got.size(), want.size());
      size_t differ = 0;
      for (size_t i = 0; i < got.size(); ++i) differ += !(got[i] == want[i]);
      EXPECT_EQ(differ, 0u) << "layer " << layer << ", " << n << " tokens, routed " << routed;
      ++compared;
    }
  }
  EXPECT_GT(compared, 0);
  EXPECT_EQ((*remote)->retries(), 0);
}

// A step of a layer no worker holds, or of rows in host memory with the
// routing on a GPU, is refused with the reason; the next step works.
TEST_P(CudaIpcTransportTest, BadStepsAreRefusedAndTheNextWorks) {
  std::vector<std::string> warnings;
  auto remote = Connect(&warnings);
  ASSERT_TRUE(remote.ok()) << remote.status();
  const int h = config_.hidden_size, slots = config_.num_experts_per_tok;
  std::mt19937 rng(8);
  const Batch b = RandomBatch(4, h, config_.num_experts, slots, &rng);
  auto out = DeviceBuffer::Allocate(4 * h * sizeof(float));
  ASSERT_TRUE(out.ok());
  ExpertBatch bad{config_.num_layers + 3, 4, h, b.d_hidden->as<float>(), slots, b.d_ids->as<int>(),
                  b.d_weights->as<float>()};
  bad.on_device = bad.routing_on_device = true;
  absl::Status st = (*remote)->Execute(bad, (*out)->as<float>());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  int layer = 0;
  while (!config_.is_moe_layer[layer]) ++layer;
  ExpertBatch host{layer, 4, h, b.hidden.data(), slots, b.d_ids->as<int>(), b.d_weights->as<float>()};
  host.routing_on_device = true;
  st = (*remote)->Execute(host, (*out)->as<float>());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_EQ(Execute(remote->get(), b, layer, 4, h, slots, true), Execute(local_.get(), b, layer, 4, h, slots, true));
}

// A worker that stops answering (SIGSTOP: its process and memory stay) is
// not a hang: the step fails within the receive timeout (UNAVAILABLE; with
// a counter, whose answers are read after the rows were used, ABORTED: the
// step must run again), the router's GPU is released and keeps working
// (the experts in this process still run), and the connection is dropped.
// (A worker that exits frees the memory the router maps, which CUDA leaves
// undefined for the importer: docs/OPERATIONS.md.)
TEST_P(CudaIpcTransportTest, AStoppedWorkerIsUnavailable) {
  std::vector<std::string> warnings;
  auto remote = Connect(&warnings, /*receive_timeout_ms=*/500);
  ASSERT_TRUE(remote.ok()) << remote.status();
  const int h = config_.hidden_size, slots = config_.num_experts_per_tok;
  int layer = 0;
  while (!config_.is_moe_layer[layer]) ++layer;
  std::mt19937 rng(9);
  const Batch b = RandomBatch(8, h, config_.num_experts, slots, &rng);
  const std::vector<float> want = Execute(local_.get(), b, layer, 8, h, slots, true);
  EXPECT_EQ(Execute(remote->get(), b, layer, 8, h, slots, true), want);
  ASSERT_TRUE(CudaSynchronize(nullptr).ok());
  ASSERT_EQ(kill(worker_->pid(), SIGSTOP), 0);
  ASSERT_TRUE(WaitUntilStopped(worker_->pid())) << "SIGSTOP takes effect";
  auto out = DeviceBuffer::Allocate(8 * h * sizeof(float));
  ASSERT_TRUE(out.ok());
  ExpertBatch batch{layer, 8, h, b.d_hidden->as<float>(), slots, b.d_ids->as<int>(), b.d_weights->as<float>()};
  batch.on_device = batch.routing_on_device = true;
  absl::Status st = (*remote)->Execute(batch, (*out)->as<float>());
  const bool counter = Counts(GetParam().sync);
  EXPECT_EQ(st.code(), counter ? absl::StatusCode::kAborted : absl::StatusCode::kUnavailable) << st;
  EXPECT_TRUE(CudaSynchronize(nullptr).ok()) << "the router's GPU is released";
  remote->reset();
  EXPECT_EQ(Execute(local_.get(), b, layer, 8, h, slots, true), want);
  kill(worker_->pid(), SIGCONT);
}

// With counters, Finish returns before the worker has answered: a batch's
// rows come out right once the GPU gets there, and Settle reads the answers
// (several batches away unread, then one Settle).
TEST_P(CudaIpcTransportTest, AnswersReadLaterGiveTheSameRows) {
  std::vector<std::string> warnings;
  auto remote = Connect(&warnings);
  ASSERT_TRUE(remote.ok()) << remote.status();
  const int h = config_.hidden_size, slots = config_.num_experts_per_tok;
  int layer = 0;
  while (!config_.is_moe_layer[layer]) ++layer;
  std::mt19937 rng(11);
  std::vector<Batch> batches;
  std::vector<std::unique_ptr<DeviceBuffer>> outs;
  for (int i = 0; i < 5; ++i) {
    batches.push_back(RandomBatch(3 + i, h, config_.num_experts, slots, &rng));
    const Batch& b = batches.back();
    auto out = DeviceBuffer::Allocate(static_cast<size_t>(3 + i) * h * sizeof(float));
    ASSERT_TRUE(out.ok());
    ExpertBatch batch{layer, 3 + i, h, b.d_hidden->as<float>(), slots, b.d_ids->as<int>(), b.d_weights->as<float>()};
    batch.on_device = batch.routing_on_device = true;
    ASSERT_TRUE((*remote)->Start(batch, (*out)->as<float>(), 0).ok());
    ASSERT_TRUE((*remote)->Finish(0).ok());
    outs.push_back(std::move(*out));
  }
  EXPECT_TRUE((*remote)->Settle().ok());
  ASSERT_TRUE(CudaSynchronize(nullptr).ok());
  for (int i = 0; i < 5; ++i) {
    std::vector<float> got(static_cast<size_t>(3 + i) * h);
    ASSERT_TRUE(outs[i]->CopyTo(got.data(), got.size() * sizeof(float)).ok());
    EXPECT_EQ(got, Execute(local_.get(), batches[i], layer, 3 + i, h, slots, true)) << "batch " << i;
  }
}

// A graph of two layers' hops captured while the executor records (the
// GPU work only), replayed three times with fresh rows in the same buffers:
// each replay's requests are numbered afresh, and the rows equal the
// experts in this process. Eager steps between replays keep working; a
// connection set up afresh since makes the replay FAILED_PRECONDITION,
// having sent nothing. Without a counter nothing records, and the executor
// says so from then on.
TEST_P(CudaIpcTransportTest, RecordedHopsReplayWithFreshRows) {
  std::vector<std::string> warnings;
  auto remote = Connect(&warnings);
  ASSERT_TRUE(remote.ok()) << remote.status();
  ExpertExecutor* ex = remote->get();
  const int h = config_.hidden_size, slots = config_.num_experts_per_tok, n = 5;
  std::vector<int> layers;
  for (int l = 0; l < config_.num_layers && layers.size() < 2; ++l) {
    if (config_.is_moe_layer[l]) layers.push_back(l);
  }
  ASSERT_FALSE(layers.empty());
  std::mt19937 rng(13);
  std::vector<Batch> batches;
  std::vector<std::unique_ptr<DeviceBuffer>> outs;
  for (int l : layers) {
    batches.push_back(RandomBatch(n, h, config_.num_experts, slots, &rng));
    auto out = DeviceBuffer::Allocate(static_cast<size_t>(n) * h * sizeof(float));
    ASSERT_TRUE(out.ok());
    outs.push_back(std::move(*out));
    // Set up (and warm) as a step before a capture would.
    EXPECT_EQ(Execute(ex, batches.back(), l, n, h, slots, true),
              Execute(local_.get(), batches.back(), l, n, h, slots, true));
  }
  auto stream = OwnedStream::Create();
  ASSERT_TRUE(stream.ok());
  auto run_layers = [&](CudaStream s) -> absl::Status {
    for (size_t i = 0; i < layers.size(); ++i) {
      ExpertBatch batch{layers[i], n, h, batches[i].d_hidden->as<float>(), slots, batches[i].d_ids->as<int>(),
                        batches[i].d_weights->as<float>()};
      batch.on_device = batch.routing_on_device = true;
      batch.cuda_stream = s;
      MM_RETURN_IF_ERROR(ex->Start(batch, outs[i]->as<float>(), 0));
      MM_RETURN_IF_ERROR(ex->Finish(0));
    }
    return absl::OkStatus();
  };
  const bool counter = Counts(GetParam().sync);
  ASSERT_TRUE(ex->replays());
  ASSERT_TRUE(ex->BeginRecording().ok());
  ASSERT_TRUE(CudaGraph::BeginCapture((*stream)->get()).ok());
  const absl::Status ran = run_layers((*stream)->get());
  auto graph = CudaGraph::EndCapture((*stream)->get());
  int64_t id = -1;
  const absl::Status ended = ex->EndRecording(ran.ok() && graph.ok(), &id);
  if (!counter) {
    EXPECT_EQ(ran.code(), absl::StatusCode::kFailedPrecondition) << ran;
    EXPECT_FALSE(ended.ok());
    EXPECT_FALSE(ex->replays()) << "events cannot record: said once, for good";
    CudaClearLastError();
    EXPECT_EQ(Execute(ex, batches[0], layers[0], n, h, slots, true),
              Execute(local_.get(), batches[0], layers[0], n, h, slots, true));
    return;
  }
  ASSERT_TRUE(ran.ok()) << ran;
  ASSERT_TRUE(graph.ok()) << graph.status();
  ASSERT_TRUE(ended.ok()) << ended;
  for (int replay = 0; replay < 4; ++replay) {
    for (size_t i = 0; i < layers.size(); ++i) {  // fresh rows and routing, in place
      Batch fresh = RandomBatch(n, h, config_.num_experts, slots, &rng);
      ASSERT_TRUE(batches[i].d_hidden->CopyFrom(fresh.hidden.data(), fresh.hidden.size() * sizeof(float)).ok());
      ASSERT_TRUE(batches[i].d_ids->CopyFrom(fresh.ids.data(), fresh.ids.size() * sizeof(int)).ok());
      ASSERT_TRUE(batches[i].d_weights->CopyFrom(fresh.weights.data(), fresh.weights.size() * sizeof(float)).ok());
      batches[i].hidden = fresh.hidden;
      batches[i].ids = fresh.ids;
      batches[i].weights = fresh.weights;
      ASSERT_TRUE(outs[i]->Fill(0xff).ok());
    }
    const absl::Status st = ex->Replay(id, [&] { return (*graph)->Launch((*stream)->get()); });
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_TRUE(ex->Settle().ok());
    ASSERT_TRUE(CudaSynchronize((*stream)->get()).ok());
    for (size_t i = 0; i < layers.size(); ++i) {
      std::vector<float> got(static_cast<size_t>(n) * h);
      ASSERT_TRUE(outs[i]->CopyTo(got.data(), got.size() * sizeof(float)).ok());
      EXPECT_EQ(got, Execute(local_.get(), batches[i], layers[i], n, h, slots, true))
          << "replay " << replay << ", layer " << layers[i];
    }
    // Replays back to back (a decode's steps), and an eager step between.
    if (replay % 2 == 0) continue;
    EXPECT_EQ(Execute(ex, batches[0], layers[0], n, h, slots, true),
              Execute(local_.get(), batches[0], layers[0], n, h, slots, true));
  }
  // Set up afresh (a batch past the buffers' size): the graph is stale.
  const Batch big = RandomBatch(100, h, config_.num_experts, slots, &rng);
  EXPECT_EQ(Execute(ex, big, layers[0], 100, h, slots, true),
            Execute(local_.get(), big, layers[0], 100, h, slots, true));
  bool launched = false;
  const absl::Status stale = ex->Replay(id, [&] {
    launched = true;
    return absl::OkStatus();
  });
  EXPECT_EQ(stale.code(), absl::StatusCode::kFailedPrecondition) << stale;
  EXPECT_FALSE(launched);
  ex->ForgetRecording(id);
  EXPECT_TRUE(ex->Settle().ok());
  EXPECT_EQ(Execute(ex, batches[1 % batches.size()], layers[1 % layers.size()], n, h, slots, true),
            Execute(local_.get(), batches[1 % batches.size()], layers[1 % layers.size()], n, h, slots, true));
}

const Control kControls[] = {{0, CudaIpcTransport::Sync::kCounter},
                             {0, CudaIpcTransport::Sync::kGpu},
                             {0, CudaIpcTransport::Sync::kHost},
                             {-1, CudaIpcTransport::Sync::kCounter},
                             {-1, CudaIpcTransport::Sync::kGpu},
                             {0, CudaIpcTransport::Sync::kAuto}};
std::string ControlName(const ::testing::TestParamInfo<Control>& i) {
  static const char* const kSync[] = {"Auto", "Gpu", "Host", "Counter"};
  return std::string(i.param.data_port == 0 ? "Frames" : "GrpcStream") + kSync[static_cast<int>(i.param.sync)] +
         "Sync";
}
INSTANTIATE_TEST_SUITE_P(Control, CudaIpcTransportTest, ::testing::ValuesIn(kControls), ControlName);

// Only kHost waits on the hosts; the names parse.
TEST(CudaIpcSyncTest, OnlyHostWaitsOnTheHosts) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto host_sync = [](CudaIpcTransport::Sync sync) {
    v1::ShardInfo info;
    info.set_hidden_size(8);
    info.mutable_cuda_ipc()->set_device(0);
    info.mutable_cuda_ipc()->set_device_uuid(CudaDeviceUuid(0));
    auto factory = CudaIpcTransport::Wrapper(0, 2, 16, sync)(info, [] { return std::unique_ptr<ExpertTransport>(); });
    auto transport = factory();
    return static_cast<CudaIpcTransport*>(transport.get())->host_sync();
  };
  EXPECT_FALSE(host_sync(CudaIpcTransport::Sync::kAuto));
  EXPECT_FALSE(host_sync(CudaIpcTransport::Sync::kGpu));
  EXPECT_FALSE(host_sync(CudaIpcTransport::Sync::kCounter));
  EXPECT_TRUE(host_sync(CudaIpcTransport::Sync::kHost));
  EXPECT_EQ(CudaIpcTransport::ParseSync("host").value(), CudaIpcTransport::Sync::kHost);
  EXPECT_EQ(CudaIpcTransport::ParseSync("auto").value(), CudaIpcTransport::Sync::kAuto);
  EXPECT_EQ(CudaIpcTransport::ParseSync("counter").value(), CudaIpcTransport::Sync::kCounter);
  EXPECT_EQ(CudaIpcTransport::ParseSync("sometimes").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(StreamMemOpsSupported(0)) << "an H100 or H200 with a CUDA 12+ driver has stream memory operations";
}

}  // namespace
}  // namespace moemesh
