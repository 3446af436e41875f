#include "services/router/router_service.h"

#include <chrono>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "core/engine/engine.h"
#include "core/engine/generation_loop.h"
#include "core/engine/scheduler.h"
#include "gtest/gtest.h"
#include "services/common/drain.h"
#include "services/common/server_util.h"

namespace moemesh {
namespace {

constexpr char kModel[] = "tests/fixtures/qwen3_moe";

// A router served over a real loopback socket.
class RouterServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    EngineOptions o;
    o.kv_block_size = 512;  // one block per request, so usage counts requests
    auto engine = Engine::Create(kModel, o);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
    loop_ = std::make_unique<GenerationLoop>(engine_->NewScheduler(64, 2048), 256);
    service_ = std::make_unique<RouterServiceImpl>(loop_.get());
    int port = 0;
    server_ = StartServer("127.0.0.1:0", {service_.get()}, &port);
    ASSERT_NE(server_, nullptr);
    stub_ = v1::Router::NewStub(grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                                          grpc::InsecureChannelCredentials(),
                                                          ClientChannelArguments()));
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
    loop_.reset();
  }

  v1::RouterStatus Status() {
    grpc::ClientContext ctx;
    v1::RouterStatus s;
    EXPECT_TRUE(stub_->GetStatus(&ctx, v1::GetStatusRequest(), &s).ok());
    return s;
  }

  std::unique_ptr<Engine> engine_;
  std::unique_ptr<GenerationLoop> loop_;
  std::unique_ptr<RouterServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Router::Stub> stub_;
};

v1::RouterGenerateRequest Request(std::vector<int> prompt, int max_tokens) {
  v1::RouterGenerateRequest r;
  for (int t : prompt) r.add_prompt_ids(t);
  r.set_max_tokens(max_tokens);
  r.mutable_sampling()->set_temperature(0);
  return r;
}

TEST_F(RouterServiceTest, StreamsTheEnginesTokens) {
  auto alone = Engine::Create(kModel, {});
  ASSERT_TRUE(alone.ok());
  GenerateParams g;
  g.sampling.temperature = 0;  // greedy
  g.max_new_tokens = 12;
  auto want = (*alone)->Generate({5, 17, 300, 42}, g);
  ASSERT_TRUE(want.ok());

  grpc::ClientContext ctx;
  v1::RouterGenerateRequest req = Request({5, 17, 300, 42}, 12);
  req.set_logprobs(2);
  auto reader = stub_->Generate(&ctx, req);
  v1::RouterGenerateResponse resp;
  std::vector<int> got;
  int logprobs = 0;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  while (reader->Read(&resp)) {
    got.insert(got.end(), resp.token_ids().begin(), resp.token_ids().end());
    logprobs += resp.logprobs_size();
    for (const auto& lp : resp.logprobs()) EXPECT_EQ(lp.top_size(), 2);
    if (resp.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) finish = resp.finish_reason();
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(got, want->tokens);
  EXPECT_EQ(logprobs, static_cast<int>(got.size()));
  EXPECT_EQ(finish, want->finish_reason == FinishReason::kStop ? v1::FINISH_REASON_STOP : v1::FINISH_REASON_LENGTH);
}

TEST_F(RouterServiceTest, BadRequestsGetInvalidArgument) {
  struct Case {
    v1::RouterGenerateRequest req;
    const char* says;
  };
  std::vector<Case> cases;
  cases.push_back({Request({}, 4), "prompt is empty"});
  cases.push_back({Request({1, 999999}, 4), "outside the vocabulary"});
  cases.push_back({Request({1}, 0), "max_new_tokens must be >= 1"});
  cases.push_back({Request({1}, 4), "top_p"});
  cases.back().req.mutable_sampling()->set_top_p(1.5f);
  cases.push_back({Request({1}, 4), "logprobs"});
  cases.back().req.set_logprobs(50);
  for (const Case& c : cases) {
    grpc::ClientContext ctx;
    auto reader = stub_->Generate(&ctx, c.req);
    v1::RouterGenerateResponse resp;
    EXPECT_FALSE(reader->Read(&resp));
    grpc::Status st = reader->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.says;
    EXPECT_NE(st.error_message().find(c.says), std::string::npos) << st.error_message();
  }
  v1::RouterGenerateRequest huge = Request({1}, 1 << 24);
  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, huge);
  v1::RouterGenerateResponse resp;
  EXPECT_FALSE(reader->Read(&resp));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

// While the process drains (SIGTERM), new calls are refused with
// UNAVAILABLE, which the gateway retries on another router; after, served.
TEST_F(RouterServiceTest, RefusesNewCallsWhileDraining) {
  SetDraining(true);
  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, Request({1, 2, 3}, 2));
  v1::RouterGenerateResponse resp;
  EXPECT_FALSE(reader->Read(&resp));
  grpc::Status st = reader->Finish();
  SetDraining(false);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(st.error_message().find("shutting down"), std::string::npos) << st.error_message();
  grpc::ClientContext again;
  reader = stub_->Generate(&again, Request({1, 2, 3}, 2));
  int tokens = 0;
  while (reader->Read(&resp)) tokens += resp.token_ids_size();
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(tokens, 2);
}

// A client that cancels, or whose deadline passes, leaves the batch and
// frees its cache.
TEST_F(RouterServiceTest, CancelAndDeadlineFreeTheCache) {
  v1::RouterGenerateRequest req = Request({1, 2, 3}, 30000);  // runs for seconds
  req.set_ignore_eos(true);
  grpc::ClientContext cancelled, timed;
  timed.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  auto a = stub_->Generate(&cancelled, req);
  auto b = stub_->Generate(&timed, req);
  v1::RouterGenerateResponse resp;
  ASSERT_TRUE(a->Read(&resp));
  ASSERT_TRUE(b->Read(&resp));
  // Stats are published after the step that sent the tokens.
  for (int i = 0; i < 1000 && Status().running_requests() != 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  v1::RouterStatus s = Status();
  EXPECT_EQ(s.running_requests(), 2);
  EXPECT_EQ(s.kv_cache_blocks_used(), 2);
  EXPECT_EQ(s.model_type(), "qwen3_moe");
  cancelled.TryCancel();
  while (a->Read(&resp)) {
  }
  EXPECT_EQ(a->Finish().error_code(), grpc::StatusCode::CANCELLED);
  while (b->Read(&resp)) {
  }
  EXPECT_EQ(b->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (Status().running_requests() != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  s = Status();
  EXPECT_EQ(s.running_requests(), 0);
  EXPECT_EQ(s.kv_cache_blocks_used(), 0);
}

}  // namespace
}  // namespace moemesh
