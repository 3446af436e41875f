// The mesh's expert hop: a model whose experts run on expert workers (real
// servers on loopback ports, over the raw data channel or the gRPC stream)
// must give exactly the logits of the single-process engine, with one and
// with several shards.
#include "services/expert_client/remote_expert_executor.h"

#include <chrono>
#include <cmath>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/common/file_util.h"
#include "core/engine/engine.h"
#include "core/engine/kv_cache.h"
#include "core/engine/cpu_forward_pass.h"
#include "core/experts/local_expert_executor.h"
#include "core/model/safetensors.h"
#include "core/model/weights.h"
#include "core/quant/fp8_rows.h"
#include "core/tensor/dtype.h"
#include "core/tensor/thread_pool.h"
#include "gtest/gtest.h"
#include "services/common/frame_socket.h"
#include "services/common/server_util.h"
#include "services/expert/expert_service.h"
#include "services/expert/expert_worker.h"

namespace moemesh {
namespace {

struct Worker {
  std::unique_ptr<ExpertWorker> worker;
  std::unique_ptr<ExpertServiceImpl> service;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<FrameServer> frames;  // the raw data channel, when offered
  std::string address;

  // Stops serving as a crash would: the data channel at once, the gRPC
  // stream after `ms`.
  void Kill(int ms) {
    if (frames) frames->Stop();
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
  }
};

// Workers in this process on loopback ports; with `data_channel` they also
// offer the raw data channel (as moemesh-expert does by default).
std::vector<Worker> StartWorkers(const std::string& model, int shards, bool data_channel = true) {
  std::vector<Worker> out;
  for (int i = 0; i < shards; ++i) {
    Worker w;
    ExpertWorker::Options o;
    o.model_dir = model;
    o.shard_index = i;
    o.num_shards = shards;
    auto worker = ExpertWorker::Create(o);
    EXPECT_TRUE(worker.ok()) << worker.status();
    w.worker = std::move(*worker);
    w.service = std::make_unique<ExpertServiceImpl>(w.worker.get());
    if (data_channel) {
      ExpertServiceImpl* svc = w.service.get();
      auto f = FrameServer::Start("127.0.0.1", 0, [svc](FrameSocket* s) { svc->ServeFrames(s); });
      EXPECT_TRUE(f.ok()) << f.status();
      w.frames = std::move(*f);
      w.service->set_data_port(w.frames->port());
    }
    int port = 0;
    w.server = StartServer("127.0.0.1:0", {w.service.get()}, &port);
    EXPECT_NE(w.server, nullptr);
    w.address = "127.0.0.1:" + std::to_string(port);
    out.push_back(std::move(w));
  }
  return out;
}

std::vector<std::string> Addresses(const std::vector<Worker>& ws) {
  std::vector<std::string> a;
  for (const Worker& w : ws) a.push_back(w.address);
  return a;
}

// Prefill + greedy decode, returning every logit row produced.
std::vector<float> RunModel(const std::string& model_dir, ExpertExecutor* experts) {
  auto config = LoadModelConfig(model_dir);
  auto ckpt = Checkpoint::Open(model_dir);
  auto w = LoadWeights(std::move(*ckpt), *config);
  auto weights = std::make_shared<const ModelWeights>(std::move(*w));
  auto model = CpuForwardPass::Create(*config, weights, nullptr);
  KvCache cache(config->num_layers, (*model)->kv_k_width(), (*model)->kv_v_width(), 16, 8);
  LocalExpertExecutor local(&weights->experts, nullptr);
  ExpertExecutor* ex = experts ? experts : &local;
  std::vector<int> prompt = {3, 14, 15, 92, 65, 35, 89, 79};
  KvSequence seq;
  std::vector<float> all, logits;
  ForwardItem item{&seq, prompt, true};
  EXPECT_TRUE((*model)->Forward({&item, 1}, &cache, ex, &logits).ok());
  all = logits;
  const int vocab = config->vocab_size;
  for (int step = 0; step < 6; ++step) {
    int next = static_cast<int>(std::max_element(logits.end() - vocab, logits.end()) - (logits.end() - vocab));
    logits.clear();
    ForwardItem dec{&seq, absl::MakeConstSpan(&next, 1), false};
    absl::Status st = (*model)->Forward({&dec, 1}, &cache, ex, &logits);
    EXPECT_TRUE(st.ok()) << st;
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return all;
}

class RemoteExpertsTest : public ::testing::TestWithParam<std::tuple<std::string, int, bool>> {};

// Over the raw data channel and over the gRPC stream alike.
TEST_P(RemoteExpertsTest, LogitsEqualSingleProcessExactly) {
  const auto& [name, shards, data_channel] = GetParam();
  const std::string dir = "tests/fixtures/" + name;
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok());
  std::vector<Worker> workers = StartWorkers(dir, shards, data_channel);
  std::vector<std::vector<std::string>> replicas;
  for (const std::string& a : Addresses(workers)) replicas.push_back({a});
  RemoteExpertExecutor::Options options;
  options.use_data_channel = data_channel;
  auto remote = RemoteExpertExecutor::Connect(replicas, config->hidden_size, options);
  ASSERT_TRUE(remote.ok()) << remote.status();
  // Negotiated from what the workers offer.
  for (const std::string& t : (*remote)->transports()) EXPECT_EQ(t, data_channel ? "frames" : "grpc-stream");
  std::vector<float> local = RunModel(dir, nullptr);
  std::vector<float> mesh = RunModel(dir, remote->get());
  ASSERT_EQ(local.size(), mesh.size());
  EXPECT_EQ(local, mesh);  // bitwise
}

INSTANTIATE_TEST_SUITE_P(Fixtures, RemoteExpertsTest,
                         ::testing::Combine(::testing::Values("mixtral", "qwen2_moe", "deepseek_v3", "olmoe"),
                                            ::testing::Values(1, 3), ::testing::Bool()),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_" + std::to_string(std::get<1>(info.param)) +
                                  "_shards" + (std::get<2>(info.param) ? "_data_channel" : "_grpc");
                         });

// Three sequences prefilled in one step, then decoded together greedily;
// every logit row produced. With `micro_batches` 2 (and an executor with
// lanes) each step runs as two micro-batches in ping-pong.
std::vector<float> RunBatch(const std::string& model_dir, ExpertExecutor* experts, int micro_batches) {
  auto config = LoadModelConfig(model_dir);
  auto ckpt = Checkpoint::Open(model_dir);
  auto w = LoadWeights(std::move(*ckpt), *config);
  auto weights = std::make_shared<const ModelWeights>(std::move(*w));
  auto model = CpuForwardPass::Create(*config, weights, nullptr, micro_batches);
  KvCache cache(config->num_layers, (*model)->kv_k_width(), (*model)->kv_v_width(), 16, 12);
  LocalExpertExecutor local(&weights->experts, nullptr);
  ExpertExecutor* ex = experts ? experts : &local;
  const std::vector<std::vector<int>> prompts = {
      {3, 14, 15, 92, 65, 35, 89, 79}, {2, 71, 82, 81, 82}, {1, 41, 42, 13, 56, 23, 7}};
  std::vector<KvSequence> seqs(prompts.size());
  std::vector<int> next(prompts.size());
  std::vector<float> all, logits;
  const int vocab = config->vocab_size;
  for (int step = 0; step < 6; ++step) {
    std::vector<ForwardItem> items;
    for (size_t i = 0; i < prompts.size(); ++i) {
      items.push_back({&seqs[i], step == 0 ? absl::MakeConstSpan(prompts[i]) : absl::MakeConstSpan(&next[i], 1),
                       false});
    }
    logits.clear();
    absl::Status st = (*model)->Forward(items, &cache, ex, &logits);
    EXPECT_TRUE(st.ok()) << st;
    if (!st.ok()) break;
    for (size_t i = 0; i < prompts.size(); ++i) {
      const float* row = logits.data() + i * vocab;
      next[i] = static_cast<int>(std::max_element(row, row + vocab) - row);
    }
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return all;
}

class PingPongTest : public ::testing::TestWithParam<std::tuple<std::string, bool>> {};

// Micro-batch ping-pong moves no logit: two micro-batches of whole
// sequences, their experts away on the workers in turn, give the one
// process's logits of the same steps exactly, over either transport.
TEST_P(PingPongTest, TwoMicroBatchesGiveTheSameLogits) {
  const auto& [name, data_channel] = GetParam();
  const std::string dir = "tests/fixtures/" + name;
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok());
  std::vector<Worker> workers = StartWorkers(dir, 2, data_channel);
  RemoteExpertExecutor::Options options;
  options.use_data_channel = data_channel;
  auto remote = RemoteExpertExecutor::Connect({{workers[0].address}, {workers[1].address}}, config->hidden_size,
                                              options);
  ASSERT_TRUE(remote.ok()) << remote.status();
  ASSERT_EQ((*remote)->lanes(), 2);
  const std::vector<float> local = RunBatch(dir, nullptr, 1);
  const std::vector<float> mesh = RunBatch(dir, remote->get(), 2);
  ASSERT_EQ(local.size(), mesh.size());
  EXPECT_EQ(local, mesh);  // bitwise
}

INSTANTIATE_TEST_SUITE_P(Fixtures, PingPongTest,
                         ::testing::Combine(::testing::Values("mixtral", "qwen2_moe", "deepseek_v3"), ::testing::Bool()),
                         [](const auto& info) {
                           return std::get<0>(info.param) + (std::get<1>(info.param) ? "_data_channel" : "_grpc");
                         });

// A lane started again without its Finish drops what it had away: the
// next answers are this batch's, not the stale one's.
TEST(RemoteExpertsLanesTest, ARestartedLaneAnswersItsNewBatch) {
  const std::string dir = "tests/fixtures/mixtral";
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok());
  std::vector<Worker> workers = StartWorkers(dir, 1);
  auto remote = RemoteExpertExecutor::Connect(Addresses(workers), config->hidden_size);
  ASSERT_TRUE(remote.ok()) << remote.status();
  auto ckpt = Checkpoint::Open(dir);
  auto w = LoadWeights(std::move(*ckpt), *config);
  LocalExpertExecutor local(&w->experts, nullptr);
  const int h = config->hidden_size, n = 3, k = config->num_experts_per_tok;
  std::vector<float> x1(n * h), x2(n * h);
  for (int i = 0; i < n * h; ++i) x1[i] = std::sin(0.1f * i), x2[i] = std::cos(0.07f * i);
  std::vector<int> ids(n * k);
  std::vector<float> gates(n * k, 1.0f / k);
  for (int t = 0; t < n; ++t) {
    for (int j = 0; j < k; ++j) ids[t * k + j] = (t + j) % config->num_experts;
  }
  const ExpertBatch b1{0, n, h, x1.data(), k, ids.data(), gates.data()};
  const ExpertBatch b2{0, n, h, x2.data(), k, ids.data(), gates.data()};
  std::vector<float> out1(n * h), out2(n * h), want(n * h);
  ASSERT_TRUE((*remote)->Start(b1, out1.data(), 1).ok());
  ASSERT_TRUE((*remote)->Start(b2, out2.data(), 1).ok());  // b1 abandoned
  ASSERT_TRUE((*remote)->Finish(1).ok());
  ASSERT_TRUE(local.Execute(b2, want.data()).ok());
  EXPECT_EQ(out2, want);
  EXPECT_EQ((*remote)->Finish(1).code(), absl::StatusCode::kFailedPrecondition);  // nothing away
  EXPECT_EQ((*remote)->Start(b1, out1.data(), 2).code(), absl::StatusCode::kInvalidArgument);
}

// Who adds a token's rows: a worker holding whole layers adds them as the
// router would (bitwise the same logits, whoever adds); workers that hold a
// part each add theirs when asked, and the router the parts (the same
// logits up to f32 rounding, since the additions come in another order).
TEST(RemoteExpertExecutorTest, WorkersAddTheirRowsWhenAsked) {
  const std::string dir = "tests/fixtures/qwen2_moe";
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok());
  const std::vector<float> local = RunModel(dir, nullptr);
  for (int shards : {1, 3}) {
    std::vector<Worker> workers = StartWorkers(dir, shards);
    std::vector<std::vector<std::string>> replicas;
    for (const std::string& a : Addresses(workers)) replicas.push_back({a});
    for (auto combine : {RemoteExpertExecutor::Combine::kWorkers, RemoteExpertExecutor::Combine::kRouter}) {
      RemoteExpertExecutor::Options options;
      options.combine = combine;
      auto remote = RemoteExpertExecutor::Connect(replicas, config->hidden_size, options);
      ASSERT_TRUE(remote.ok()) << remote.status();
      const std::vector<float> mesh = RunModel(dir, remote->get());
      ASSERT_EQ(mesh.size(), local.size());
      if (shards == 1 || combine == RemoteExpertExecutor::Combine::kRouter) {
        EXPECT_EQ(mesh, local) << shards << " shards";
        continue;
      }
      double worst = 0;
      for (size_t i = 0; i < mesh.size(); ++i) worst = std::max(worst, std::abs(double{mesh[i]} - local[i]));
      EXPECT_LT(worst, 1e-4) << "logits of workers' sums vs the router's";
    }
  }
  EXPECT_EQ(RemoteExpertExecutor::ParseCombine("workers").value(), RemoteExpertExecutor::Combine::kWorkers);
  EXPECT_EQ(RemoteExpertExecutor::ParseCombine("both").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(RemoteExpertExecutorTest, ConnectChecksPlacementAndReachability) {
  std::vector<Worker> workers = StartWorkers("tests/fixtures/mixtral", 2);
  // Swapped addresses: shard 0's address serves shard 1.
  auto swapped = RemoteExpertExecutor::Connect({workers[1].address, workers[0].address}, 64);
  EXPECT_EQ(swapped.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(swapped.status().message().find(workers[1].address), std::string::npos);
  auto wrong_hidden = RemoteExpertExecutor::Connect(Addresses(workers), 128);
  EXPECT_EQ(wrong_hidden.status().code(), absl::StatusCode::kFailedPrecondition);
  auto nobody = RemoteExpertExecutor::Connect({"127.0.0.1:1"}, 64, /*connect_timeout_ms=*/300);
  EXPECT_EQ(nobody.status().code(), absl::StatusCode::kUnavailable);
}

// Two replicas per shard: steps rotate between them, and when one dies in
// the middle of a generation its requests go to the other, with no change
// in the logits.
TEST(RemoteExpertExecutorTest, SurvivesLosingOneOfTwoReplicas) {
  const std::string dir = "tests/fixtures/qwen3_moe";
  std::vector<Worker> a = StartWorkers(dir, 2), b = StartWorkers(dir, 2);
  auto remote = RemoteExpertExecutor::Connect({{a[0].address, b[0].address}, {a[1].address, b[1].address}}, 64);
  ASSERT_TRUE(remote.ok()) << remote.status();
  auto config = LoadModelConfig(dir);
  auto ckpt = Checkpoint::Open(dir);
  auto w = LoadWeights(std::move(*ckpt), *config);
  auto weights = std::make_shared<const ModelWeights>(std::move(*w));
  auto model = CpuForwardPass::Create(*config, weights, nullptr);
  LocalExpertExecutor local(&weights->experts, nullptr);
  KvCache cache(config->num_layers, (*model)->kv_k_width(), (*model)->kv_v_width(), 16, 8);
  std::vector<int> prompt = {9, 8, 7, 6, 5};
  KvSequence s_local, s_mesh;
  std::vector<float> l_local, l_mesh;
  ForwardItem p1{&s_local, prompt, false}, p2{&s_mesh, prompt, false};
  ASSERT_TRUE((*model)->Forward({&p1, 1}, &cache, &local, &l_local).ok());
  ASSERT_TRUE((*model)->Forward({&p2, 1}, &cache, remote->get(), &l_mesh).ok());
  for (int step = 0; step < 8; ++step) {
    ASSERT_EQ(l_local, l_mesh) << "step " << step;
    if (step == 3) {  // replica a of shard 0 dies mid-generation
      a[0].Kill(50);
    }
    int next = static_cast<int>(std::max_element(l_local.begin(), l_local.end()) - l_local.begin());
    l_local.clear();
    l_mesh.clear();
    ForwardItem d1{&s_local, absl::MakeConstSpan(&next, 1), false}, d2{&s_mesh, absl::MakeConstSpan(&next, 1), false};
    ASSERT_TRUE((*model)->Forward({&d1, 1}, &cache, &local, &l_local).ok());
    absl::Status st = (*model)->Forward({&d2, 1}, &cache, remote->get(), &l_mesh);
    ASSERT_TRUE(st.ok()) << st;
  }
  EXPECT_GT((*remote)->retries(), 0);
}

// Retry throttling: with a dead replica that is never passed over
// (ejection off), every other step fails on it and is sent again to the
// live one, spending the budget faster than answers refill it; once half is
// spent such a step fails UNAVAILABLE, saying why, instead of doubling its
// traffic. Retries stay within half the budget plus a tenth of the calls.
// A budget of 0 never retries.
TEST(RemoteExpertExecutorTest, ARetryBudgetBoundsTheRetries) {
  const std::string dir = "tests/fixtures/qwen3_moe";
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok());
  std::vector<Worker> a = StartWorkers(dir, 1), b = StartWorkers(dir, 1);
  a[0].Kill(0);
  const int h = config->hidden_size;
  std::vector<float> x(2 * h, 0.25f), out(2 * h);
  const std::vector<int> ids = {0, 1, 2, 3};
  const std::vector<float> w = {0.5f, 0.5f, 0.5f, 0.5f};
  const ExpertBatch batch{0, 2, h, x.data(), 2, ids.data(), w.data()};
  for (int tokens : {10, 0}) {
    RemoteExpertExecutor::Options options;
    options.eject_ms = 0;
    options.retry_tokens = tokens;
    options.connect_timeout_ms = 2000;
    // Connect checks every replica: connect while `a` still listens.
    std::vector<Worker> fresh = StartWorkers(dir, 1);
    auto remote = RemoteExpertExecutor::Connect({{fresh[0].address, b[0].address}}, h, options);
    ASSERT_TRUE(remote.ok()) << remote.status();
    fresh[0].Kill(0);
    int calls = 0, refused_at = -1;
    for (int step = 0; step < 60 && refused_at < 0; ++step) {
      ++calls;
      absl::Status st = (*remote)->Execute(batch, out.data());
      if (st.ok()) continue;
      EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
      EXPECT_NE(st.message().find("retry budget"), std::string::npos) << st;
      refused_at = step;
    }
    ASSERT_GE(refused_at, 0) << "a budget of " << tokens << " was never spent";
    EXPECT_LE((*remote)->retries(), tokens / 2 + calls / 10 + 1) << calls << " calls";
    if (tokens == 0) {
      EXPECT_EQ((*remote)->retries(), 0);
    }
  }
}

// A replica that stops answering without closing its connection (SIGSTOP,
// a wedged process): with a receive timeout its request goes to the shard's
// other replica, the logits do not change, and the silent one is ejected:
// the generation waits out the timeout once, not on every step.
TEST(RemoteExpertExecutorTest, RoutesAroundASilentReplica) {
  const std::string dir = "tests/fixtures/qwen3_moe";
  std::vector<Worker> good = StartWorkers(dir, 2), silent = StartWorkers(dir, 2);
  // Shard 0's second replica reads requests and never answers.
  silent[0].frames->Stop();
  auto mute = FrameServer::Start("127.0.0.1", 0, [](FrameSocket* s) {
    v1::DispatchRequest r;
    std::vector<char> payload;
    while (s->Receive(&r, &payload).ok()) {
    }
  });
  ASSERT_TRUE(mute.ok());
  silent[0].service->set_data_port((*mute)->port());
  RemoteExpertExecutor::Options o;
  o.receive_timeout_ms = 200;
  auto remote = RemoteExpertExecutor::Connect(
      {{good[0].address, silent[0].address}, {good[1].address, silent[1].address}}, 64, o);
  ASSERT_TRUE(remote.ok()) << remote.status();
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(RunModel(dir, remote->get()), RunModel(dir, nullptr));
  EXPECT_EQ((*remote)->retries(), 1);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
}

// Hedging: shard 0's first replica holds every answer back 300 ms; after
// 20 ms the request goes to the other replica too, whose answer is taken.
// Nothing is a failure (no retry, no ejection) and the logits are exact.
// A replica that answers in time is never hedged; nor is one reached over
// the gRPC stream, which cannot say when its answer comes.
TEST(RemoteExpertExecutorTest, HedgesPastASlowReplica) {
  const std::string dir = "tests/fixtures/qwen3_moe";
  const std::vector<float> want = RunModel(dir, nullptr);
  for (const bool data_channel : {true, false}) {
    std::vector<Worker> slow = StartWorkers(dir, 2, data_channel), fast = StartWorkers(dir, 2, data_channel);
    slow[0].service->set_fault_delay_ms(300);
    RemoteExpertExecutor::Options o;
    o.hedge_ms = 20;
    auto remote = RemoteExpertExecutor::Connect(
        {{slow[0].address, fast[0].address}, {fast[1].address, slow[1].address}}, 64, o);
    ASSERT_TRUE(remote.ok()) << remote.status();
    EXPECT_EQ(RunModel(dir, remote->get()), want);
    EXPECT_EQ((*remote)->retries(), 0);
    if (data_channel) {
      // Every call whose turn fell on the slow replica: at least one.
      EXPECT_GE((*remote)->hedges(), 1);
    } else {
      EXPECT_EQ((*remote)->hedges(), 0);
    }
    o.hedge_ms = 5000;  // longer than any answer takes
    remote = RemoteExpertExecutor::Connect({{fast[0].address}, {fast[1].address, slow[1].address}}, 64, o);
    ASSERT_TRUE(remote.ok()) << remote.status();
    EXPECT_EQ(RunModel(dir, remote->get()), want);
    EXPECT_EQ((*remote)->hedges(), 0);
  }
}

// A shard whose replicas come from a source (here a file; dns:/// in
// Kubernetes): scaled from one replica to three and back to one while the
// model runs. New replicas take calls from the next steps on, gone ones
// none (they are stopped: a call to them would fail), and every logit stays
// exact. A source that names nothing, or a worker of the wrong shard, never
// empties the shard.
TEST(RemoteExpertExecutorTest, ReplicasComeAndGoFromTheirSource) {
  const std::string dir = "tests/fixtures/qwen3_moe";
  const std::vector<float> want = RunModel(dir, nullptr);
  std::vector<Worker> a = StartWorkers(dir, 2), b = StartWorkers(dir, 2), c = StartWorkers(dir, 2);
  const std::string list = ::testing::TempDir() + "/replicas_of_shard_0";
  auto write = [&](const std::string& text) { ASSERT_TRUE(WriteFileAtomically(list, text).ok()); };
  write(a[0].address + "\n");
  RemoteExpertExecutor::Options o;
  o.resolve_period_ms = 20;
  auto remote = RemoteExpertExecutor::Connect({{"file:" + list}, {a[1].address}}, 64, o);
  ASSERT_TRUE(remote.ok()) << remote.status();
  std::set<std::string> answered;
  (*remote)->set_dispatch_observer([&](const std::string& w, double) { answered.insert(w); });
  // Waits (running the model, which takes the changes) until shard 0 has `n`.
  auto settle = [&](size_t n) {
    for (int i = 0; i < 200 && (*remote)->replicas(0).size() != n; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      EXPECT_EQ(RunModel(dir, remote->get()), want);
    }
    return (*remote)->replicas(0).size();
  };
  EXPECT_EQ(RunModel(dir, remote->get()), want);
  write(a[0].address + "\n# more\n" + b[0].address + " | " + c[0].address + "\n" + c[1].address + "\n");
  EXPECT_EQ(settle(3), 3u) << "c[1] serves shard 1: it must not join shard 0";
  answered.clear();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(RunModel(dir, remote->get()), want);
  EXPECT_TRUE(answered.count(b[0].address) && answered.count(c[0].address));
  write(c[0].address + "\n");
  EXPECT_EQ(settle(1), 1u);
  EXPECT_EQ((*remote)->replicas(0), std::vector<std::string>{c[0].address});
  a[0].Kill(0);
  b[0].Kill(0);
  write("");  // names nothing: the shard keeps what it has
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(RunModel(dir, remote->get()), want);
  EXPECT_EQ((*remote)->replicas(0), std::vector<std::string>{c[0].address});
  EXPECT_EQ((*remote)->retries(), 0);
  // Malformed sources are refused at once.
  EXPECT_EQ(RemoteExpertExecutor::Connect({{"dns:///no-port"}, {a[1].address}}, 64, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RemoteExpertExecutor::Connect({{"file:" + list + ".missing"}, {a[1].address}}, 64, o).status().code(),
            absl::StatusCode::kUnavailable);
}

// The same over the gRPC Dispatch stream (the transport under TLS): a
// replica whose stream takes requests and never answers.
class SilentDispatch final : public v1::ExpertService::Service {
 public:
  explicit SilentDispatch(ExpertServiceImpl* real) : real_(real) {}
  grpc::Status GetShardInfo(grpc::ServerContext* c, const v1::GetShardInfoRequest* r,
                            v1::ShardInfo* out) override {
    return real_->GetShardInfo(c, r, out);
  }
  grpc::Status Dispatch(grpc::ServerContext*,
                        grpc::ServerReaderWriter<v1::DispatchResponse, v1::DispatchRequest>* stream) override {
    v1::DispatchRequest r;
    while (stream->Read(&r)) {
    }
    return grpc::Status::OK;
  }

 private:
  ExpertServiceImpl* real_;
};

TEST(RemoteExpertExecutorTest, RoutesAroundASilentReplicaOnTheGrpcStream) {
  const std::string dir = "tests/fixtures/qwen3_moe";
  std::vector<Worker> good = StartWorkers(dir, 2, /*data_channel=*/false), other = StartWorkers(dir, 2, false);
  SilentDispatch silent(other[0].service.get());
  int port = 0;
  auto server = StartServer("127.0.0.1:0", {&silent}, &port);
  ASSERT_NE(server, nullptr);
  RemoteExpertExecutor::Options o;
  o.receive_timeout_ms = 200;
  auto remote = RemoteExpertExecutor::Connect(
      {{good[0].address, "127.0.0.1:" + std::to_string(port)}, {good[1].address, other[1].address}}, 64, o);
  ASSERT_TRUE(remote.ok()) << remote.status();
  EXPECT_EQ((*remote)->transports()[0], "grpc-stream");
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(RunModel(dir, remote->get()), RunModel(dir, nullptr));
  EXPECT_EQ((*remote)->retries(), 1);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  remote->reset();
  server->Shutdown(std::chrono::system_clock::now());
}

TEST(RemoteExpertExecutorTest, ParsesReplicaSpecs) {
  auto s = RemoteExpertExecutor::ParseAddresses("a:1|b:2,c:3");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(*s, (std::vector<std::vector<std::string>>{{"a:1", "b:2"}, {"c:3"}}));
  EXPECT_EQ(RemoteExpertExecutor::ParseAddresses("a:1,,c:3").status().code(), absl::StatusCode::kInvalidArgument);
}

// A model's routed experts alone (the wire tests run them here beside the
// workers).
absl::StatusOr<ModelWeights> LoadRoutedExperts(const std::string& dir, const ModelConfig& config) {
  auto ckpt = Checkpoint::Open(dir);
  if (!ckpt.ok()) return ckpt.status();
  WeightLoadOptions load;
  load.load_dense = false;
  return LoadWeights(std::move(*ckpt), config, load);
}

// Rows in bf16 on the wire: by default only to workers where that changes
// nothing (CPU workers get f32), and when asked for everywhere: then a CPU
// worker computes on the rounded rows, exactly as the local experts do on
// them. The same for FP8 rows with their scales (workers take them, so
// asking is enough). Over both transports.
TEST(RemoteExpertExecutorTest, Bf16AndFp8RowsOnTheWire) {
  const std::string dir = "tests/fixtures/mixtral";
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok());
  const int h = config->hidden_size, tokens = 5, slots = config->num_experts_per_tok;
  auto w = LoadRoutedExperts(dir, *config);
  ASSERT_TRUE(w.ok()) << w.status();
  LocalExpertExecutor local(&w->experts, nullptr);
  std::vector<float> hidden(static_cast<size_t>(tokens) * h), rounded(hidden.size());
  for (size_t i = 0; i < hidden.size(); ++i) {
    hidden[i] = 0.37f * std::sin(0.1f * static_cast<float>(i)) + 1e-3f * static_cast<float>(i % 7);
    rounded[i] = Bf16ToF32(F32ToBf16(hidden[i]));
  }
  ASSERT_NE(hidden, rounded);
  std::vector<float> fp8(hidden.size());
  {
    std::vector<uint8_t> codes(h);
    std::vector<float> scales(Fp8RowGroups(h));
    for (int t = 0; t < tokens; ++t) {
      QuantizeRowFp8(hidden.data() + t * h, h, codes.data(), scales.data());
      DequantizeRowFp8(codes.data(), scales.data(), h, fp8.data() + t * h);
    }
  }
  ASSERT_NE(hidden, fp8);
  std::vector<int> ids;
  std::vector<float> weights;
  for (int t = 0; t < tokens; ++t) {
    for (int j = 0; j < slots; ++j) {
      ids.push_back((t + 3 * j) % config->num_experts);
      weights.push_back(0.25f + 0.5f * j);
    }
  }
  ExpertBatch batch{0, tokens, h, hidden.data(), slots, ids.data(), weights.data()};
  ExpertBatch batch_rounded = batch, batch_fp8 = batch;
  batch_rounded.hidden_states = rounded.data();
  batch_fp8.hidden_states = fp8.data();
  std::vector<float> want(hidden.size()), want_rounded(hidden.size()), want_fp8(hidden.size());
  ASSERT_TRUE(local.Execute(batch, want.data()).ok());
  ASSERT_TRUE(local.Execute(batch_rounded, want_rounded.data()).ok());
  ASSERT_TRUE(local.Execute(batch_fp8, want_fp8.data()).ok());
  for (bool data_channel : {true, false}) {
    std::vector<Worker> workers = StartWorkers(dir, 2, data_channel);
    std::vector<std::vector<std::string>> shards;
    for (const std::string& a : Addresses(workers)) shards.push_back({a});
    RemoteExpertExecutor::Options options;
    options.use_data_channel = data_channel;
    auto automatic = RemoteExpertExecutor::Connect(shards, h, options);
    options.rows = RemoteExpertExecutor::Rows::kBf16;
    auto bf16 = RemoteExpertExecutor::Connect(shards, h, options);
    options.rows = RemoteExpertExecutor::Rows::kFp8;
    auto fp8_rows = RemoteExpertExecutor::Connect(shards, h, options);
    ASSERT_TRUE(automatic.ok() && bf16.ok() && fp8_rows.ok());
    using Rows = RemoteExpertExecutor::Rows;
    EXPECT_EQ((*automatic)->row_types(), (std::vector<Rows>{Rows::kF32, Rows::kF32}));  // CPU workers round nothing
    EXPECT_EQ((*bf16)->row_types(), (std::vector<Rows>{Rows::kBf16, Rows::kBf16}));
    EXPECT_EQ((*fp8_rows)->row_types(), (std::vector<Rows>{Rows::kFp8, Rows::kFp8}));
    // What moves the results names the KV cache's blocks.
    EXPECT_EQ((*automatic)->ResultsTag(), "");
    EXPECT_EQ((*bf16)->ResultsTag(), "shard 0: rows=bf16; shard 1: rows=bf16");
    EXPECT_EQ((*fp8_rows)->ResultsTag(), "shard 0: rows=fp8; shard 1: rows=fp8");
    std::vector<float> got(hidden.size()), got_bf16(hidden.size()), got_fp8(hidden.size());
    ASSERT_TRUE((*automatic)->Execute(batch, got.data()).ok());
    ASSERT_TRUE((*bf16)->Execute(batch, got_bf16.data()).ok());
    ASSERT_TRUE((*fp8_rows)->Execute(batch, got_fp8.data()).ok());
    EXPECT_EQ(got, want) << "data channel " << data_channel;
    EXPECT_EQ(got_bf16, want_rounded) << "data channel " << data_channel;
    EXPECT_EQ(got_fp8, want_fp8) << "data channel " << data_channel;
    // The bytes on the wire: bf16 rows half of f32's, FP8 a quarter plus a
    // 4-byte scale a row (hidden 64: one group); the answers alike.
    const int64_t f32_bytes = (*automatic)->row_bytes_sent();
    EXPECT_GT(f32_bytes, 0);
    EXPECT_EQ((*bf16)->row_bytes_sent() * 2, f32_bytes);
    EXPECT_EQ((*fp8_rows)->row_bytes_sent() * 4 * h, f32_bytes * (h + 4));
    EXPECT_EQ((*fp8_rows)->answer_bytes_received(), (*automatic)->answer_bytes_received());
  }
  EXPECT_EQ(*RemoteExpertExecutor::ParseRows("bf16"), RemoteExpertExecutor::Rows::kBf16);
  EXPECT_EQ(*RemoteExpertExecutor::ParseRows("fp8"), RemoteExpertExecutor::Rows::kFp8);
  EXPECT_EQ(RemoteExpertExecutor::ParseRows("fp4").status().code(), absl::StatusCode::kInvalidArgument);
}

// Answers in bf16 (--expert-answers bf16): a worker that holds a layer whole
// adds a token's rows in f32 as the local experts do and rounds the sum
// once, so the answer is the local result rounded to bf16, over both
// transports; by default answers stay f32.
TEST(RemoteExpertExecutorTest, Bf16AnswersOnTheWire) {
  const std::string dir = "tests/fixtures/mixtral";
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok());
  const int h = config->hidden_size, tokens = 6, slots = config->num_experts_per_tok;
  auto w = LoadRoutedExperts(dir, *config);
  ASSERT_TRUE(w.ok()) << w.status();
  LocalExpertExecutor local(&w->experts, nullptr);
  std::vector<float> hidden(static_cast<size_t>(tokens) * h);
  for (size_t i = 0; i < hidden.size(); ++i) hidden[i] = 0.41f * std::sin(0.13f * static_cast<float>(i));
  std::vector<int> ids;
  std::vector<float> weights;
  for (int t = 0; t < tokens; ++t) {
    for (int j = 0; j < slots; ++j) {
      ids.push_back((2 * t + 5 * j) % config->num_experts);
      weights.push_back(0.3f + 0.4f * j);
    }
  }
  ExpertBatch batch{0, tokens, h, hidden.data(), slots, ids.data(), weights.data()};
  std::vector<float> want(hidden.size()), rounded(hidden.size());
  ASSERT_TRUE(local.Execute(batch, want.data()).ok());
  for (size_t i = 0; i < want.size(); ++i) rounded[i] = Bf16ToF32(F32ToBf16(want[i]));
  ASSERT_NE(want, rounded);
  for (bool data_channel : {true, false}) {
    std::vector<Worker> workers = StartWorkers(dir, 1, data_channel);
    RemoteExpertExecutor::Options options;
    options.use_data_channel = data_channel;
    auto exact = RemoteExpertExecutor::Connect({{workers[0].address}}, h, options);
    options.answers = RemoteExpertExecutor::Answers::kBf16;
    auto half = RemoteExpertExecutor::Connect({{workers[0].address}}, h, options);
    ASSERT_TRUE(exact.ok() && half.ok());
    using Answers = RemoteExpertExecutor::Answers;
    EXPECT_EQ((*exact)->answer_types(), std::vector<Answers>{Answers::kF32});
    EXPECT_EQ((*half)->answer_types(), std::vector<Answers>{Answers::kBf16});
    EXPECT_EQ((*exact)->ResultsTag(), "");
    EXPECT_EQ((*half)->ResultsTag(), "shard 0: answers=bf16");
    std::vector<float> got(hidden.size()), got_half(hidden.size());
    ASSERT_TRUE((*exact)->Execute(batch, got.data()).ok());
    ASSERT_TRUE((*half)->Execute(batch, got_half.data()).ok());
    EXPECT_EQ(got, want) << "data channel " << data_channel;
    EXPECT_EQ(got_half, rounded) << "data channel " << data_channel;
    EXPECT_EQ((*half)->answer_bytes_received() * 2, (*exact)->answer_bytes_received());
    EXPECT_EQ((*exact)->answer_bytes_received(), static_cast<int64_t>(want.size() * sizeof(float)));
  }
  EXPECT_EQ(*RemoteExpertExecutor::ParseAnswers("bf16"), RemoteExpertExecutor::Answers::kBf16);
  EXPECT_EQ(RemoteExpertExecutor::ParseAnswers("fp8").status().code(), absl::StatusCode::kInvalidArgument);
}

// A shard's replicas must compute alike (any may answer any call, and the
// KV cache is named by how they do): a worker with --bf16-inputs beside one
// without is refused, naming both; two alike name the cache by their tag,
// and an engine over them names its blocks apart from one over exact workers.
TEST(RemoteExpertExecutorTest, ReplicasComputeAlikeAndNameTheCache) {
  const std::string dir = "tests/fixtures/mixtral";
  std::vector<Worker> exact = StartWorkers(dir, 1);
  std::vector<Worker> rounded;
  for (int i = 0; i < 2; ++i) {
    Worker w;
    ExpertWorker::Options o;
    o.model_dir = dir;
    o.bf16_inputs = true;
    auto worker = ExpertWorker::Create(o);
    ASSERT_TRUE(worker.ok()) << worker.status();
    w.worker = std::move(*worker);
    w.service = std::make_unique<ExpertServiceImpl>(w.worker.get());
    int port = 0;
    w.server = StartServer("127.0.0.1:0", {w.service.get()}, &port);
    w.address = "127.0.0.1:" + std::to_string(port);
    rounded.push_back(std::move(w));
  }
  using Shards = std::vector<std::vector<std::string>>;
  auto mixed = RemoteExpertExecutor::Connect(Shards{{exact[0].address, rounded[0].address}}, 64);
  EXPECT_EQ(mixed.status().code(), absl::StatusCode::kFailedPrecondition) << mixed.status();
  EXPECT_NE(mixed.status().message().find("bf16_inputs"), std::string::npos) << mixed.status();
  auto alike = RemoteExpertExecutor::Connect(Shards{{rounded[0].address, rounded[1].address}}, 64);
  ASSERT_TRUE(alike.ok()) << alike.status();
  EXPECT_EQ((*alike)->ResultsTag(), "shard 0: bf16_inputs");
  auto exact_remote = RemoteExpertExecutor::Connect(Shards{{exact[0].address}}, 64);
  ASSERT_TRUE(exact_remote.ok()) << exact_remote.status();
  EngineOptions o;
  auto over_exact = Engine::Create(dir, o, std::move(*exact_remote));
  auto over_rounded = Engine::Create(dir, o, std::move(*alike));
  ASSERT_TRUE(over_exact.ok() && over_rounded.ok()) << over_exact.status() << over_rounded.status();
  EXPECT_NE((*over_exact)->cache_root(), (*over_rounded)->cache_root());
}

// A worker from before FP8 rows and BF16 answers: what the real one serves,
// but its ShardInfo says neither fp8_rows nor bf16_outputs.
class OlderExpertService final : public v1::ExpertService::Service {
 public:
  explicit OlderExpertService(ExpertServiceImpl* inner) : inner_(inner) {}
  grpc::Status Dispatch(grpc::ServerContext* context,
                        grpc::ServerReaderWriter<v1::DispatchResponse, v1::DispatchRequest>* stream) override {
    return inner_->Dispatch(context, stream);
  }
  grpc::Status GetShardInfo(grpc::ServerContext* context, const v1::GetShardInfoRequest* request,
                            v1::ShardInfo* info) override {
    grpc::Status st = inner_->GetShardInfo(context, request, info);
    info->clear_fp8_rows();
    info->clear_bf16_outputs();
    return st;
  }

 private:
  ExpertServiceImpl* inner_;
};

// Asked for FP8 rows and BF16 answers, a router sends a worker that takes
// neither what it would have sent anyway (f32 to a CPU worker), takes f32
// answers, and says so; results are then the exact ones.
TEST(RemoteExpertExecutorTest, Fp8RowsAndBf16AnswersFallBackForAWorkerWithoutThem) {
  std::vector<Worker> workers = StartWorkers("tests/fixtures/mixtral", 1, /*data_channel=*/false);
  OlderExpertService older(workers[0].service.get());
  int port = 0;
  std::unique_ptr<grpc::Server> server = StartServer("127.0.0.1:0", {&older}, &port);
  ASSERT_NE(server, nullptr);
  const std::vector<std::vector<std::string>> shards = {{"127.0.0.1:" + std::to_string(port)}};
  const int h = 64;
  RemoteExpertExecutor::Options options;
  options.rows = RemoteExpertExecutor::Rows::kFp8;
  options.answers = RemoteExpertExecutor::Answers::kBf16;
  std::vector<std::string> warnings;
  options.warn = [&warnings](const std::string& w) { warnings.push_back(w); };
  auto remote = RemoteExpertExecutor::Connect(shards, h, options);
  ASSERT_TRUE(remote.ok()) << remote.status();
  EXPECT_EQ((*remote)->row_types(), std::vector<RemoteExpertExecutor::Rows>{RemoteExpertExecutor::Rows::kF32});
  EXPECT_EQ((*remote)->answer_types(),
            std::vector<RemoteExpertExecutor::Answers>{RemoteExpertExecutor::Answers::kF32});
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_NE(warnings[0].find("does not take fp8 rows"), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[1].find("does not answer in bf16"), std::string::npos) << warnings[1];
  auto exact = RemoteExpertExecutor::Connect({workers[0].address}, h);
  ASSERT_TRUE(exact.ok()) << exact.status();
  std::vector<float> hidden(3 * h), got(hidden.size()), want(hidden.size());
  for (size_t i = 0; i < hidden.size(); ++i) hidden[i] = 0.3f * std::cos(0.7f * static_cast<float>(i));
  int ids[6] = {0, 1, 2, 3, 4, 5};
  float wts[6] = {0.5f, 0.5f, 0.25f, 0.75f, 0.5f, 0.5f};
  ExpertBatch batch{0, 3, h, hidden.data(), 2, ids, wts};
  ASSERT_TRUE((*remote)->Execute(batch, got.data()).ok());
  ASSERT_TRUE((*exact)->Execute(batch, want.data()).ok());
  EXPECT_EQ(got, want);
  remote->reset();
  server->Shutdown();
}

TEST(RemoteExpertExecutorTest, WorkerGoneIsUnavailable) {
  std::vector<Worker> workers = StartWorkers("tests/fixtures/mixtral", 2);
  auto remote = RemoteExpertExecutor::Connect(Addresses(workers), 64);
  ASSERT_TRUE(remote.ok());
  std::vector<float> hidden(2 * 64, 0.1f), out(2 * 64);
  int ids[4] = {0, 1, 2, 3};
  float wts[4] = {0.5f, 0.5f, 0.5f, 0.5f};
  ExpertBatch batch{0, 2, 64, hidden.data(), 2, ids, wts};
  ASSERT_TRUE((*remote)->Execute(batch, out.data()).ok());
  // Cancels the worker's open stream after 100 ms, as a crash would.
  workers[1].Kill(100);
  absl::Status st = (*remote)->Execute(batch, out.data());
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_NE(st.message().find(workers[1].address), std::string::npos);
}

// Rows in host memory cannot be recorded into a CUDA graph: the executor
// says so, and refuses a recording and a replay with the reason; steps go
// on as before.
TEST(RemoteExpertExecutorTest, HostRowsAreNotRecorded) {
  std::vector<Worker> workers = StartWorkers("tests/fixtures/mixtral", 1);
  auto remote = RemoteExpertExecutor::Connect(Addresses(workers), 64);
  ASSERT_TRUE(remote.ok());
  ExpertExecutor* ex = remote->get();
  EXPECT_FALSE(ex->capturable());
  EXPECT_FALSE(ex->replays());
  EXPECT_EQ(ex->BeginRecording().code(), absl::StatusCode::kFailedPrecondition);
  int64_t id = 7;
  EXPECT_EQ(ex->EndRecording(true, &id).code(), absl::StatusCode::kFailedPrecondition);
  bool launched = false;
  const absl::Status st = ex->Replay(1, [&] {
    launched = true;
    return absl::OkStatus();
  });
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_FALSE(launched);
  std::vector<float> hidden(2 * 64, 0.1f), out(2 * 64);
  int ids[4] = {0, 1, 2, 3};
  float wts[4] = {0.5f, 0.5f, 0.5f, 0.5f};
  ExpertBatch batch{0, 2, 64, hidden.data(), 2, ids, wts};
  EXPECT_TRUE(ex->Execute(batch, out.data()).ok());
}

}  // namespace
}  // namespace moemesh
