#include "services/expert/expert_worker.h"

#include "core/experts/local_expert_executor.h"
#include "core/model/safetensors.h"
#include "gtest/gtest.h"
#include "moemesh/v1/expert.pb.h"
#include "services/common/frame_socket.h"
#include "services/common/host_id.h"
#include "services/expert/expert_service.h"

namespace moemesh {
namespace {

ExpertWorker::Options Shard(int index, int count) {
  ExpertWorker::Options o;
  o.model_dir = "tests/fixtures/qwen2_moe";  // layer 1 is dense
  o.shard_index = index;
  o.num_shards = count;
  return o;
}

TEST(ExpertWorkerTest, LoadsOnlyItsShard) {
  auto w = ExpertWorker::Create(Shard(1, 3));
  ASSERT_TRUE(w.ok()) << w.status();
  auto held = (*w)->HeldExperts();
  ASSERT_EQ(held.size(), 2u);  // layers 0 and 2
  EXPECT_EQ(held[0].first, 0);
  EXPECT_EQ(held[0].second, (std::vector<int>{1, 4, 7}));
  EXPECT_EQ(held[1].first, 2);
}

// ShardInfo.results_tag says what moves a worker's results from exact f32
// products: nothing by default, else its quantization and bf16 inputs.
TEST(ExpertWorkerTest, ResultsTagNamesWhatMovesItsResults) {
  auto exact = ExpertWorker::Create(Shard(0, 1));
  ASSERT_TRUE(exact.ok()) << exact.status();
  EXPECT_EQ((*exact)->results_tag(), "");
  ExpertWorker::Options o = Shard(0, 1);
  o.quantize = *ParseQuantSpec("int4:64");
  o.bf16_inputs = true;
  auto moved = ExpertWorker::Create(o);
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ((*moved)->results_tag(), "quantize=int4:64 bf16_inputs");
  ExpertServiceImpl service(moved->get());
  v1::ShardInfo info;
  grpc::ServerContext context;
  v1::GetShardInfoRequest request;
  ASSERT_TRUE(service.GetShardInfo(&context, &request, &info).ok());
  EXPECT_EQ(info.results_tag(), "quantize=int4:64 bf16_inputs");
  EXPECT_TRUE(info.fp8_rows() && info.bf16_outputs());
}

TEST(ExpertWorkerTest, BadOptions) {
  EXPECT_EQ(ExpertWorker::Create(Shard(3, 3)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ExpertWorker::Create(Shard(0, 9)).status().code(), absl::StatusCode::kInvalidArgument);
  auto o = Shard(0, 1);
  o.model_dir = "/nonexistent";
  EXPECT_EQ(ExpertWorker::Create(o).status().code(), absl::StatusCode::kNotFound);
}

TEST(ExpertWorkerTest, MatchesLocalExecutorRowByRow) {
  auto w = ExpertWorker::Create(Shard(0, 2));
  ASSERT_TRUE(w.ok());
  std::vector<float> hidden(3 * 64);
  for (size_t i = 0; i < hidden.size(); ++i) hidden[i] = 0.01f * static_cast<float>((i * 37) % 101) - 0.5f;
  ExpertWork work{0, 3, 64, hidden.data(), {{2, {0, 2}, {0.25f, 1.5f}}, {4, {1}, {0.75f}}}};
  std::vector<float> out;
  ASSERT_TRUE((*w)->Run(work, &out).ok());
  ASSERT_EQ(out.size(), 3u * 64);
  // Reference: the single-process executor with one expert per token.
  auto config = LoadModelConfig("tests/fixtures/qwen2_moe");
  auto ckpt = Checkpoint::Open("tests/fixtures/qwen2_moe");
  auto weights = LoadWeights(std::move(*ckpt), *config);
  ASSERT_TRUE(weights.ok());
  LocalExpertExecutor local(&weights->experts, nullptr);
  int ids[3] = {2, 4, 2};
  float wts[3] = {0.25f, 0.75f, 1.5f};
  std::vector<float> ref(3 * 64);
  ASSERT_TRUE(local.Execute({0, 3, 64, hidden.data(), 1, ids, wts}, ref.data()).ok());
  // Outputs come in request order: expert 2 rows 0, 2, then expert 4 row 1.
  for (int d = 0; d < 64; ++d) {
    EXPECT_EQ(out[d], ref[d]);
    EXPECT_EQ(out[64 + d], ref[2 * 64 + d]);
    EXPECT_EQ(out[128 + d], ref[64 + d]);
  }
}

TEST(ExpertWorkerTest, BadWorkGetsClearErrors) {
  auto w = ExpertWorker::Create(Shard(0, 2));
  ASSERT_TRUE(w.ok());
  std::vector<float> hidden(2 * 64, 0.1f), out;
  auto run = [&](ExpertWork work) { return (*w)->Run(work, &out); };
  auto st = run({1, 2, 64, hidden.data(), {{0, {0}, {1.0f}}}});  // dense layer
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("layer 1"), std::string::npos);
  st = run({0, 2, 64, hidden.data(), {{1, {0}, {1.0f}}}});  // expert 1 is on shard 1
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(run({0, 2, 64, hidden.data(), {{0, {2}, {1.0f}}}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run({0, 2, 64, hidden.data(), {{0, {0, 1}, {1.0f}}}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run({0, 2, 32, hidden.data(), {{0, {0}, {1.0f}}}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run({0, 2, 64, hidden.data(), {{99, {0}, {1.0f}}}}).code(), absl::StatusCode::kInvalidArgument);
  st = run({0, 2, 64, hidden.data(), {{0, {0}, {1.0f}}, {0, {1}, {1.0f}}}});  // expert 0 twice
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("two groups"), std::string::npos) << st;
}

TEST(ExpertServiceTest, MalformedTensorIsAnsweredInTheResponse) {
  auto w = ExpertWorker::Create(Shard(0, 1));
  ASSERT_TRUE(w.ok());
  ExpertServiceImpl service(w->get());
  v1::DispatchRequest req;
  req.set_step(7);
  req.set_layer(0);
  req.mutable_hidden_states()->set_dtype(v1::DTYPE_F32);
  req.mutable_hidden_states()->add_shape(2);
  req.mutable_hidden_states()->add_shape(64);
  req.mutable_hidden_states()->set_data(std::string(100, '\0'));  // needs 512 bytes
  v1::DispatchResponse resp;
  service.Handle(req, &resp);
  EXPECT_EQ(resp.step(), 7u);
  EXPECT_EQ(resp.error_code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(resp.error_message().find("hidden_states"), std::string::npos);
  EXPECT_FALSE(resp.has_outputs());
}

// A DeviceRowsServer that counts what it is asked (the real one needs a
// GPU: services/expert_client/cuda_ipc_transport_test.cc).
class CountingDeviceRows : public DeviceRowsServer {
 public:
  class CountingSession : public Session {
   public:
    explicit CountingSession(int* runs) : runs_(runs) {}
    absl::Status Run(const v1::DispatchRequest& request, v1::DispatchResponse* response) override {
      ++*runs_;
      response->set_combined_rows(request.hidden_states().shape(0));
      return absl::OkStatus();
    }

   private:
    int* runs_;
  };
  absl::StatusOr<std::unique_ptr<Session>> Open(const v1::CudaIpcSetup& setup, v1::CudaIpcBuffers* buffers) override {
    ++opened;
    if (setup.max_tokens() < 1) return absl::InvalidArgumentError("max_tokens must be positive");
    buffers->set_max_tokens(setup.max_tokens());
    return std::make_unique<CountingSession>(&runs);
  }
  int device() const override { return 3; }
  std::string device_uuid() const override { return "00112233445566778899aabbccddeeff"; }
  int opened = 0, runs = 0;
};

v1::DispatchResponse Exchange(FrameSocket* s, const v1::DispatchRequest& req) {
  v1::DispatchResponse resp;
  std::vector<char> payload;
  EXPECT_TRUE(s->Send(req, {}).ok());
  EXPECT_TRUE(s->Receive(&resp, &payload).ok());
  EXPECT_TRUE(payload.empty());
  return resp;
}

// CUDA IPC requests on the data channel: refused with the reason by a
// worker that offers none, set up per connection by one that does, and
// work only after the set-up; the connection serves plain rows throughout.
TEST(ExpertServiceTest, CudaIpcRequestsPerConnection) {
  auto w = ExpertWorker::Create(Shard(0, 1));
  ASSERT_TRUE(w.ok());
  ExpertServiceImpl service(w->get());
  auto server = FrameServer::Start("127.0.0.1", 0, [&service](FrameSocket* s) { service.ServeFrames(s); });
  ASSERT_TRUE(server.ok());
  v1::DispatchRequest setup;
  setup.mutable_ipc_setup()->set_max_tokens(16);
  v1::DispatchRequest work;
  work.set_step(4);
  work.set_layer(0);
  work.mutable_hidden_states()->set_dtype(v1::DTYPE_F32);
  work.mutable_hidden_states()->add_shape(2);
  work.mutable_hidden_states()->add_shape(64);
  work.mutable_ipc()->set_slots(2);
  grpc::ServerContext ctx;
  v1::ShardInfo info;
  ASSERT_TRUE(service.GetShardInfo(&ctx, nullptr, &info).ok());
  EXPECT_FALSE(info.has_cuda_ipc());
  {
    auto s = FrameSocket::Connect("127.0.0.1", (*server)->port());
    ASSERT_TRUE(s.ok());
    v1::DispatchResponse r = Exchange(s->get(), setup);
    EXPECT_EQ(r.error_code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
    EXPECT_NE(r.error_message().find("offers no CUDA IPC"), std::string::npos) << r.error_message();
    EXPECT_FALSE(r.has_ipc_buffers());
  }
  CountingDeviceRows rows;
  service.set_device_rows(&rows);
  ASSERT_TRUE(service.GetShardInfo(&ctx, nullptr, &info).ok());
  EXPECT_EQ(info.cuda_ipc().host_id(), HostId());
  EXPECT_EQ(info.cuda_ipc().device(), 3);
  EXPECT_EQ(info.cuda_ipc().device_uuid(), "00112233445566778899aabbccddeeff");
  auto s = FrameSocket::Connect("127.0.0.1", (*server)->port());
  ASSERT_TRUE(s.ok());
  v1::DispatchResponse r = Exchange(s->get(), work);  // before any set-up
  EXPECT_EQ(r.error_code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_NE(r.error_message().find("has not set CUDA IPC up"), std::string::npos) << r.error_message();
  v1::DispatchRequest bad = setup;
  bad.mutable_ipc_setup()->set_max_tokens(0);
  r = Exchange(s->get(), bad);
  EXPECT_EQ(r.error_code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  r = Exchange(s->get(), setup);
  EXPECT_EQ(r.error_code(), 0) << r.error_message();
  EXPECT_EQ(r.ipc_buffers().max_tokens(), 16);
  r = Exchange(s->get(), work);
  EXPECT_EQ(r.error_code(), 0) << r.error_message();
  EXPECT_EQ(r.step(), 4u);
  EXPECT_EQ(r.combined_rows(), 2);
  EXPECT_FALSE(r.has_outputs());
  EXPECT_EQ(rows.opened, 2);
  EXPECT_EQ(rows.runs, 1);
  // Plain rows on the same connection still come back as rows.
  v1::DispatchRequest plain;
  plain.set_layer(0);
  std::vector<float> x(64, 0.5f);
  SetF32Shape(1, 64, plain.mutable_hidden_states());
  v1::ExpertRows* g = plain.add_groups();
  g->set_expert(0);
  g->add_rows(0);
  g->add_weights(1.0f);
  iovec data{x.data(), x.size() * sizeof(float)};
  ASSERT_TRUE((*s)->Send(plain, {&data, 1}).ok());
  std::vector<char> payload;
  ASSERT_TRUE((*s)->Receive(&r, &payload).ok());
  EXPECT_EQ(r.error_code(), 0) << r.error_message();
  EXPECT_EQ(payload.size(), 64 * sizeof(float));
}

}  // namespace
}  // namespace moemesh
