#include "services/gateway/gateway_service.h"

#include <chrono>
#include <sstream>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "core/engine/engine.h"
#include "core/engine/generation_loop.h"
#include "core/engine/scheduler.h"
#include "core/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "services/common/drain.h"
#include "services/common/server_util.h"
#include "services/gateway/gateway.h"
#include "absl/strings/match.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "services/gateway/gateway_metrics.h"
#include "services/gateway/router_pool.h"
#include "services/router/local_router.h"

namespace moemesh {
namespace {

constexpr char kModel[] = "models/fortune-moe";

// A gateway in front of `routers`, served over a loopback socket.
class LocalGateway {
 public:
  LocalGateway(const std::vector<std::string>& routers, int max_in_flight = 512, GatewayMetrics* metrics = nullptr,
               int max_message_bytes = kMaxMessageBytes)
      : pool_(routers) {
    tokenizer_ = std::move(*LoadTokenizer(kModel));
    auto config = LoadModelConfig(kModel);
    model_ = {"fortune-moe", "deepseek_v3", config->vocab_size, config->context_length()};
    gateway_ = std::make_unique<Gateway>(tokenizer_.get(), model_, &pool_, Gateway::Options{max_in_flight}, metrics);
    service_ = std::make_unique<GatewayServiceImpl>(gateway_.get());
    int port = 0;
    server_ = StartServer("127.0.0.1:0", {service_.get()}, &port, max_message_bytes);
    stub_ = v1::Gateway::NewStub(grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                                           grpc::InsecureChannelCredentials(),
                                                           ClientChannelArguments()));
  }
  ~LocalGateway() { server_->Shutdown(std::chrono::system_clock::now()); }
  v1::Gateway::Stub* stub() { return stub_.get(); }
  const ServedModel& model() const { return model_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  int in_flight() const { return gateway_->in_flight(); }

 private:
  std::unique_ptr<Tokenizer> tokenizer_;
  ServedModel model_;
  RouterPool pool_;
  std::unique_ptr<Gateway> gateway_;
  std::unique_ptr<GatewayServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Gateway::Stub> stub_;
};

struct Answer {
  grpc::Status status;
  std::vector<int> ids;
  std::string text;
  int responses = 0;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage;
  std::vector<v1::TokenLogprobs> logprobs;
};

Answer Generate(v1::Gateway::Stub* stub, const v1::GenerateRequest& req) {
  grpc::ClientContext ctx;
  auto reader = stub->Generate(&ctx, req);
  v1::GenerateResponse r;
  Answer a;
  while (reader->Read(&r)) {
    ++a.responses;
    a.ids.insert(a.ids.end(), r.token_ids().begin(), r.token_ids().end());
    a.text += r.text_delta();
    a.logprobs.insert(a.logprobs.end(), r.logprobs().begin(), r.logprobs().end());
    if (r.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      a.finish = r.finish_reason();
      a.usage = r.usage();
    }
  }
  a.status = reader->Finish();
  return a;
}

v1::GenerateRequest TextRequest(const std::string& text, int max_tokens) {
  v1::GenerateRequest r;
  r.set_text(text);
  r.set_max_tokens(max_tokens);
  r.mutable_sampling()->set_temperature(0);
  return r;
}

TEST(GatewayServiceTest, TextInTextOutEqualsTheEngine) {
  LocalRouter router(kModel);
  LocalGateway gw({router.address()});
  v1::GenerateRequest req = TextRequest("The meaning of life is", 24);
  req.set_logprobs(3);
  Answer a = Generate(gw.stub(), req);
  ASSERT_TRUE(a.status.ok()) << a.status.error_message();

  auto engine = Engine::Create(kModel, {});
  auto prompt = gw.tokenizer().Encode("The meaning of life is", true);
  GenerateParams g;
  g.sampling.temperature = 0;  // greedy
  g.max_new_tokens = 24;
  auto want = (*engine)->Generate(*prompt, g);
  ASSERT_TRUE(want.ok());
  EXPECT_EQ(a.ids, want->tokens);
  EXPECT_EQ(a.text, *gw.tokenizer().Decode(want->tokens, /*skip_special_tokens=*/true));  // the default
  EXPECT_EQ(a.usage.prompt_tokens(), static_cast<int>(prompt->size()));
  EXPECT_EQ(a.usage.completion_tokens(), static_cast<int>(want->tokens.size()));
  EXPECT_EQ(a.finish, want->finish_reason == FinishReason::kStop ? v1::FINISH_REASON_STOP : v1::FINISH_REASON_LENGTH);
  ASSERT_EQ(a.logprobs.size(), a.ids.size());
  for (size_t i = 0; i < a.ids.size(); ++i) {
    ASSERT_EQ(a.logprobs[i].top_size(), 3);
    EXPECT_EQ(a.logprobs[i].top(0).token_id(), a.ids[i]);  // greedy: the most likely
    EXPECT_FLOAT_EQ(a.logprobs[i].top(0).logprob(), a.logprobs[i].logprob());
    EXPECT_EQ(a.logprobs[i].top(0).text(), *gw.tokenizer().Decode({a.ids[i]}, false));
  }
}

TEST(GatewayServiceTest, StopSequencesEndTheAnswerAndFreeTheRouter) {
  LocalRouter router(kModel);
  LocalGateway gw({router.address()});
  v1::GenerateRequest req = TextRequest("Q: What is a friend?\nA:", 64);
  req.set_ignore_eos(true);
  Answer full = Generate(gw.stub(), req);
  ASSERT_TRUE(full.status.ok());
  ASSERT_GT(full.text.size(), 20u);
  const std::string stop = full.text.substr(10, 3);
  req.add_stop(stop);
  Answer cut = Generate(gw.stub(), req);
  ASSERT_TRUE(cut.status.ok()) << cut.status.error_message();
  EXPECT_EQ(cut.text, full.text.substr(0, full.text.find(stop)));
  EXPECT_EQ(cut.finish, v1::FINISH_REASON_STOP);
  EXPECT_LT(cut.ids.size(), full.ids.size());
  EXPECT_EQ(cut.usage.completion_tokens(), static_cast<int>(cut.ids.size()));
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (router.Status().running_requests() != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(router.Status().running_requests(), 0);
  EXPECT_EQ(router.Status().kv_cache_blocks_used(), 0);
}

TEST(GatewayServiceTest, BadRequestsGetTheirDocumentedStatus) {
  LocalRouter router(kModel);
  LocalGateway gw({router.address()});
  const int context = gw.model().context_length;
  struct Case {
    v1::GenerateRequest req;
    grpc::StatusCode code;
    const char* says;
  };
  std::vector<Case> cases;
  auto add = [&](v1::GenerateRequest r, grpc::StatusCode c, const char* s) { cases.push_back({r, c, s}); };
  v1::GenerateRequest r;
  r.set_max_tokens(4);
  add(r, grpc::StatusCode::INVALID_ARGUMENT, "prompt: give text or token_ids");
  add(TextRequest("", 4), grpc::StatusCode::INVALID_ARGUMENT, "text: the prompt is empty");
  r = TextRequest("hi", 4);
  r.mutable_token_ids();
  add(r, grpc::StatusCode::INVALID_ARGUMENT, "token_ids: the prompt is empty");
  r.mutable_token_ids()->add_ids(gw.model().vocab_size);
  add(r, grpc::StatusCode::INVALID_ARGUMENT, "outside the vocabulary");
  add(TextRequest("hi", 0), grpc::StatusCode::INVALID_ARGUMENT, "max_tokens must be >= 1");
  add(TextRequest("hi", context), grpc::StatusCode::INVALID_ARGUMENT, "exceeds the context");
  r = TextRequest("hi", 4);
  r.mutable_sampling()->set_top_p(0);
  add(r, grpc::StatusCode::INVALID_ARGUMENT, "sampling: top_p must be in (0, 1]");
  r = TextRequest("hi", 4);
  r.mutable_sampling()->set_temperature(-1);
  add(r, grpc::StatusCode::INVALID_ARGUMENT, "sampling: temperature");
  r = TextRequest("hi", 4);
  r.mutable_sampling()->set_presence_penalty(3);
  add(r, grpc::StatusCode::INVALID_ARGUMENT, "sampling: presence_penalty");
  r = TextRequest("hi", 4);
  r.set_logprobs(21);
  add(r, grpc::StatusCode::INVALID_ARGUMENT, "logprobs must be in [0, 20]");
  r = TextRequest("hi", 4);
  r.add_stop("");
  add(r, grpc::StatusCode::INVALID_ARGUMENT, "stop: each stop sequence");
  r = TextRequest("hi", 4);
  r.add_stop_token_ids(-1);
  add(r, grpc::StatusCode::INVALID_ARGUMENT, "stop_token_ids");
  r = TextRequest("hi", 4);
  r.set_model("gpt-4");
  add(r, grpc::StatusCode::NOT_FOUND, "model \"gpt-4\" is not served here");
  for (const Case& c : cases) {
    Answer a = Generate(gw.stub(), c.req);
    EXPECT_EQ(a.status.error_code(), c.code) << c.says << ": " << a.status.error_message();
    EXPECT_NE(a.status.error_message().find(c.says), std::string::npos) << a.status.error_message();
    EXPECT_EQ(a.responses, 0);
  }
  EXPECT_EQ(router.Status().requests_total(), 0);  // none reached the router
}

// Oversized input is refused by size before any work, and what is echoed
// back of a bad model name is bounded (issue #18).
TEST(GatewayServiceTest, OversizedInputIsRefusedAndNotEchoed) {
  LocalRouter router(kModel);
  LocalGateway gw({router.address()}, 512, nullptr, /*max_message_bytes=*/16 << 20);
  v1::GenerateRequest huge = TextRequest("hi", 2);
  huge.set_model(std::string(20 << 20, 'm'));
  Answer a = Generate(gw.stub(), huge);
  EXPECT_EQ(a.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << a.status.error_message();
  v1::GenerateRequest long_name = TextRequest("hi", 2);
  long_name.set_model(std::string(10000, 'm'));
  a = Generate(gw.stub(), long_name);
  EXPECT_EQ(a.status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_LT(a.status.error_message().size(), 200u) << a.status.error_message();
  EXPECT_TRUE(Generate(gw.stub(), TextRequest("hi", 2)).status.ok());  // the channel still works
  EXPECT_EQ(router.Status().requests_total(), 1);
}

// While the process drains, new calls are refused with UNAVAILABLE.
TEST(GatewayServiceTest, RefusesNewCallsWhileDraining) {
  LocalRouter router(kModel);
  LocalGateway gw({router.address()});
  SetDraining(true);
  Answer a = Generate(gw.stub(), TextRequest("hi", 2));
  SetDraining(false);
  EXPECT_EQ(a.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(a.status.error_message().find("shutting down"), std::string::npos) << a.status.error_message();
  EXPECT_EQ(router.Status().requests_total(), 0);
  EXPECT_TRUE(Generate(gw.stub(), TextRequest("hi", 2)).status.ok());
}

TEST(GatewayServiceTest, AdmissionControlRefusesBeyondTheLimit) {
  LocalRouter router(kModel);
  LocalGateway gw({router.address()}, /*max_in_flight=*/1);
  v1::GenerateRequest slow = TextRequest("Once upon a time", 1000);
  slow.set_ignore_eos(true);
  grpc::ClientContext ctx;
  auto reader = gw.stub()->Generate(&ctx, slow);
  v1::GenerateResponse resp;
  ASSERT_TRUE(reader->Read(&resp));  // in progress
  Answer refused = Generate(gw.stub(), TextRequest("hi", 2));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(refused.status.error_message().find("retry later"), std::string::npos);
  ctx.TryCancel();
  while (reader->Read(&resp)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  // The client left: the router drops the request, then its cache blocks
  // (the loop's next step: the two figures are read apart).
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  auto busy = [&] {
    const v1::RouterStatus s = router.Status();
    return s.running_requests() != 0 || s.kv_cache_blocks_used() != 0;
  };
  while (busy() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(router.Status().kv_cache_blocks_used(), 0);
  // The cancelled call's handler returns a moment after the client saw
  // CANCELLED; then there is room again.
  while (gw.in_flight() != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(Generate(gw.stub(), TextRequest("hi", 2)).status.ok());
}

TEST(GatewayServiceTest, SessionsStickToOneRouterAndSkipDeadOnes) {
  LocalRouter a(kModel), b(kModel);
  // A port nothing listens on: the dead router.
  std::string dead;
  {
    LocalRouter gone(kModel);
    dead = gone.address();
  }
  LocalGateway gw({a.address(), dead, b.address()});
  RouterPool pool({a.address(), dead, b.address()});
  int served = 0;
  for (int s = 0; s < 12; ++s) {
    std::string session = "session-" + std::to_string(s);
    int home = pool.Choose(session).order[0];
    int64_t before_a = a.Status().requests_total(), before_b = b.Status().requests_total();
    for (int turn = 0; turn < 3; ++turn) {
      v1::GenerateRequest req = TextRequest("Hello", 3);
      req.set_session_id(session);
      Answer ans = Generate(gw.stub(), req);
      ASSERT_TRUE(ans.status.ok()) << ans.status.error_message();
      ++served;
    }
    int64_t da = a.Status().requests_total() - before_a, db = b.Status().requests_total() - before_b;
    // All three turns on one router: the home, or (home dead) the next live one.
    EXPECT_TRUE((da == 3 && db == 0) || (da == 0 && db == 3)) << session;
    if (home == 0) {
      EXPECT_EQ(da, 3);
    } else if (home == 2) {
      EXPECT_EQ(db, 3);
    }
  }
  // Without a session: round robin, still skipping the dead router.
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(Generate(gw.stub(), TextRequest("Hi", 2)).status.ok());
  EXPECT_EQ(a.Status().requests_total() + b.Status().requests_total(), served + 6);
}

TEST(GatewayServiceTest, TokenizeDetokenizeAndListModels) {
  LocalRouter router(kModel);
  LocalGateway gw({router.address()});
  grpc::ClientContext c1;
  v1::TokenizeRequest tr;
  tr.set_text("你好, world");
  v1::TokenizeResponse tresp;
  ASSERT_TRUE(gw.stub()->Tokenize(&c1, tr, &tresp).ok());
  EXPECT_EQ(std::vector<int>(tresp.ids().begin(), tresp.ids().end()), *gw.tokenizer().Encode("你好, world", false));
  grpc::ClientContext c2;
  v1::DetokenizeRequest dr;
  *dr.mutable_ids() = tresp.ids();
  v1::DetokenizeResponse dresp;
  ASSERT_TRUE(gw.stub()->Detokenize(&c2, dr, &dresp).ok());
  EXPECT_EQ(dresp.text(), "你好, world");
  grpc::ClientContext c3;
  dr.add_ids(-5);
  EXPECT_EQ(gw.stub()->Detokenize(&c3, dr, &dresp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  grpc::ClientContext c4;
  v1::ListModelsResponse lm;
  ASSERT_TRUE(gw.stub()->ListModels(&c4, v1::ListModelsRequest(), &lm).ok());
  ASSERT_EQ(lm.models_size(), 1);
  EXPECT_EQ(lm.models(0).name(), "fortune-moe");
  EXPECT_EQ(lm.models(0).architecture(), "deepseek_v3");
  EXPECT_GT(lm.models(0).context_length(), 0);
}

std::string Scrape(prometheus::Registry& r) {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, r.Collect());
  return out.str();
}

// What the gateway's metrics count: finished, rejected and aborted requests,
// tokens, and the latency histograms with their sliding-window summaries.
TEST(GatewayServiceTest, MetricsCountWhatHappened) {
  LocalRouter router(kModel);
  prometheus::Registry registry;
  GatewayMetrics metrics(registry);
  LocalGateway gw({router.address()}, 512, &metrics);
  int generated = 0, prompt = 0;
  for (int i = 0; i < 3; ++i) {
    Answer a = Generate(gw.stub(), TextRequest("Once upon a time", 6));
    ASSERT_TRUE(a.status.ok());
    generated += static_cast<int>(a.ids.size());
    prompt += a.usage.prompt_tokens();
  }
  EXPECT_EQ(Generate(gw.stub(), TextRequest("", 6)).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  {  // a client that leaves mid-stream
    v1::GenerateRequest slow = TextRequest("Once upon a time", 900);
    slow.set_ignore_eos(true);
    grpc::ClientContext ctx;
    auto reader = gw.stub()->Generate(&ctx, slow);
    v1::GenerateResponse resp;
    ASSERT_TRUE(reader->Read(&resp));
    ctx.TryCancel();
    while (reader->Read(&resp)) {
    }
    reader->Finish();
  }
  // The cancelled call ends on the server shortly after the client leaves:
  // its request is counted as aborted, then its status (after the call's
  // work returns), so wait for both.
  auto ended = [&] {
    const std::string t = Scrape(registry);
    return absl::StrContains(t, "moemesh_requests_aborted_total 1") &&
           absl::StrContains(t, "moemesh_request_status_total{code=\"CANCELLED\"} 1");
  };
  for (int i = 0; i < 500 && !ended(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const std::string text = Scrape(registry);
  for (const std::string& want :
       {std::string("moemesh_requests_total{finish_reason=\"length\"} 3"),
        std::string("moemesh_request_status_total{code=\"OK\"} 3"),
        std::string("moemesh_request_status_total{code=\"INVALID_ARGUMENT\"} 1"),
        std::string("moemesh_request_status_total{code=\"CANCELLED\"} 1"),
        std::string("moemesh_requests_rejected_total{reason=\"INVALID_ARGUMENT\"} 1"),
        std::string("moemesh_requests_aborted_total 1"), "moemesh_prompt_tokens_total " + std::to_string(prompt),
        std::string("moemesh_time_to_first_token_seconds_count 4"),
        std::string("moemesh_e2e_request_latency_seconds_count 3"),
        std::string("moemesh_request_queue_time_seconds_count 4"),
        std::string("moemesh_e2e_request_latency_window_seconds{quantile=\"0.99\"}"),
        std::string("moemesh_requests_running 0"), std::string("moemesh_requests_waiting 0")}) {
    EXPECT_TRUE(absl::StrContains(text, want)) << want << "\n" << text;
  }
  // Every token sent, the cancelled stream's included; inter-token gaps for
  // all but each stream's first token.
  double tokens = 0, itl = 0;
  for (const auto& f : registry.Collect()) {
    if (f.name == "moemesh_generation_tokens_total") tokens = f.metric[0].counter.value;
    if (f.name == "moemesh_inter_token_latency_seconds") itl = f.metric[0].histogram.sample_count;
  }
  EXPECT_GE(tokens, generated + 1);
  EXPECT_EQ(itl, tokens - 4);
}

TEST(GatewayMetricsTest, RepetitionDetector) {
  EXPECT_FALSE(IsRepetitive({1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_FALSE(IsRepetitive({1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4}));  // 3 times: allowed
  EXPECT_TRUE(IsRepetitive({1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4}));
  EXPECT_TRUE(IsRepetitive(std::vector<int>(20, 7)));
  EXPECT_FALSE(IsRepetitive({}));
}

}  // namespace
}  // namespace moemesh
