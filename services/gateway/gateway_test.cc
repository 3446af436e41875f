// The gateway's logic driven directly, without a gateway server: requests
// go to real routers over loopback sockets.
#include "services/gateway/gateway.h"

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/synchronization/notification.h"
#include "core/engine/engine.h"
#include "core/engine/generation_loop.h"
#include "core/engine/scheduler.h"
#include "core/model/config.h"
#include "core/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "services/common/server_util.h"
#include "services/gateway/router_pool.h"
#include "services/kvcache/local_kvcache.h"
#include "services/router/local_router.h"

namespace moemesh {
namespace {

constexpr char kModel[] = "models/fortune-moe";
// Nothing listens there: a router that is down.
constexpr char kDeadRouter[] = "127.0.0.1:1";

// A Gateway over `routers`, with the fortune-moe tokenizer.
struct TestGateway {
  std::unique_ptr<Tokenizer> tokenizer;
  RouterPool pool;
  std::unique_ptr<Gateway> gateway;

  explicit TestGateway(const std::vector<std::string>& routers, int max_in_flight = 512)
      : TestGateway(routers, Gateway::Options{max_in_flight}) {}
  TestGateway(const std::vector<std::string>& routers, const Gateway::Options& options) : pool(routers) {
    tokenizer = std::move(*LoadTokenizer(kModel));
    auto config = LoadModelConfig(kModel);
    ServedModel model{"fortune-moe", "deepseek_v3", config->vocab_size, config->context_length()};
    gateway = std::make_unique<Gateway>(tokenizer.get(), model, &pool, options);
  }
};

// What a Generate call gave, and how often it made a router call.
struct Answer {
  absl::Status status;
  std::string text;
  std::vector<int> ids;
  int responses = 0;
  int router_calls = 0;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage;
};

// Runs `req` to its end; `keep` says, for each response, whether the client
// is still there.
Answer Generate(Gateway& gw, const v1::GenerateRequest& req,
                const std::function<bool(const v1::GenerateResponse&)>& keep = nullptr) {
  Answer a;
  a.status = gw.Generate(
      req,
      [&a] {
        ++a.router_calls;
        auto ctx = std::make_unique<grpc::ClientContext>();
        ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
        return ctx;
      },
      [&](const v1::GenerateResponse& r) {
        ++a.responses;
        a.text += r.text_delta();
        a.ids.insert(a.ids.end(), r.token_ids().begin(), r.token_ids().end());
        if (r.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
          a.finish = r.finish_reason();
          a.usage = r.usage();
        }
        return keep ? keep(r) : true;
      });
  return a;
}

v1::GenerateRequest TextRequest(const std::string& text, int max_tokens) {
  v1::GenerateRequest r;
  r.set_text(text);
  r.set_max_tokens(max_tokens);
  r.mutable_sampling()->set_temperature(0);
  return r;
}

// Waits up to 5 s for the router to run nothing and hold no KV block (the
// two are published together, but a cancelled request may take a step to
// leave and release).
void WaitUntilIdle(LocalRouter& router) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  auto busy = [&router] {
    const v1::RouterStatus s = router.Status();
    return s.running_requests() != 0 || s.kv_cache_blocks_used() != 0;
  };
  // Idle for 200 ms on end: the router publishes its status after a step,
  // so a first idle reading may predate the step that admitted the request.
  int idle_polls = 0;
  while (idle_polls < 40 && std::chrono::steady_clock::now() < deadline) {
    idle_polls = busy() ? 0 : idle_polls + 1;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

TEST(GatewayTest, StreamsTextWithUsage) {
  LocalRouter router(kModel);
  TestGateway gw({router.address()});
  Answer a = Generate(*gw.gateway, TextRequest("The meaning of life is", 8));
  ASSERT_TRUE(a.status.ok()) << a.status;
  EXPECT_EQ(a.router_calls, 1);
  EXPECT_GT(a.responses, 0);
  EXPECT_EQ(a.finish, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(a.ids.size(), 8u);
  EXPECT_EQ(a.text, *gw.tokenizer->Decode(a.ids, /*skip_special_tokens=*/true));
  EXPECT_EQ(a.usage.prompt_tokens(), static_cast<int>(gw.tokenizer->Encode("The meaning of life is", true)->size()));
  EXPECT_EQ(a.usage.completion_tokens(), 8);
  EXPECT_EQ(gw.gateway->in_flight(), 0);
}

// A session over two turns: the second turn's prompt is the first's prompt
// and answer, then its own text (without BOS), and it answers exactly as
// that whole prompt sent as token ids does; each turn is saved. The window
// leaves out the oldest whole turns, and refuses a turn that alone does
// not fit; without a session id or a store, continue_session is refused.
TEST(GatewayTest, SessionsContinueTheStoredConversation) {
  LocalRouter router(kModel);
  LocalKvCache kv(::testing::TempDir() + "/gateway_sessions");
  SessionClient sessions(kv.address(), HashBytes("gateway_test"));
  Gateway::Options options;
  options.sessions = &sessions;
  TestGateway gw({router.address()}, options);
  auto turn = [](const std::string& text, int max_tokens) {
    v1::GenerateRequest r = TextRequest(text, max_tokens);
    r.set_session_id("chat");
    r.set_continue_session(true);
    return r;
  };

  Answer a1 = Generate(*gw.gateway, turn("The meaning of life is", 8));
  ASSERT_TRUE(a1.status.ok()) << a1.status;
  std::vector<int> history = *gw.tokenizer->Encode("The meaning of life is", true);
  EXPECT_EQ(a1.usage.prompt_tokens(), static_cast<int>(history.size()));
  const int first_turn = static_cast<int>(history.size() + a1.ids.size());
  history.insert(history.end(), a1.ids.begin(), a1.ids.end());
  absl::StatusOr<SessionHistory> saved = sessions.Load("chat");
  ASSERT_TRUE(saved.ok()) << saved.status();
  EXPECT_EQ(saved->tokens, history);
  EXPECT_EQ(saved->turn_starts, (std::vector<int>{0}));
  EXPECT_EQ(saved->version, 1);

  Answer a2 = Generate(*gw.gateway, turn(" And then", 6));
  ASSERT_TRUE(a2.status.ok()) << a2.status;
  std::vector<int> whole = history;
  const std::vector<int> second = *gw.tokenizer->Encode(" And then", false);
  whole.insert(whole.end(), second.begin(), second.end());
  v1::GenerateRequest direct = TextRequest("", 6);
  direct.mutable_token_ids()->mutable_ids()->Assign(whole.begin(), whole.end());
  Answer d = Generate(*gw.gateway, direct);
  ASSERT_TRUE(d.status.ok()) << d.status;
  EXPECT_EQ(a2.ids, d.ids);
  EXPECT_EQ(a2.usage.prompt_tokens(), static_cast<int>(whole.size()));
  saved = sessions.Load("chat");
  EXPECT_EQ(saved->version, 2);
  EXPECT_EQ(saved->turn_starts, (std::vector<int>{0, first_turn}));
  EXPECT_EQ(saved->tokens.size(), whole.size() + a2.ids.size());

  // A window with room for the second and a third turn, not the first: the
  // first turn is left out, whole.
  Gateway::Options narrow = options;
  narrow.session_window = static_cast<int>(saved->tokens.size()) - first_turn + 8;
  TestGateway gw2({router.address()}, narrow);
  Answer a3 = Generate(*gw2.gateway, turn(" Yes", 4));
  ASSERT_TRUE(a3.status.ok()) << a3.status;
  saved = sessions.Load("chat");
  EXPECT_EQ(saved->turn_starts.size(), 2u);  // the second turn, now first, and the third
  EXPECT_EQ(saved->turn_starts[0], 0);
  EXPECT_LE(static_cast<int>(saved->tokens.size()), narrow.session_window);
  // A turn that alone exceeds the window.
  Answer too_long = Generate(*gw2.gateway, turn(" Yes", narrow.session_window));
  EXPECT_EQ(too_long.status.code(), absl::StatusCode::kInvalidArgument) << too_long.status;
  EXPECT_NE(too_long.status.message().find("session window"), absl::string_view::npos) << too_long.status;

  v1::GenerateRequest no_id = turn("hi", 2);
  no_id.clear_session_id();
  EXPECT_EQ(Generate(*gw.gateway, no_id).status.code(), absl::StatusCode::kInvalidArgument);
  TestGateway no_store({router.address()});
  Answer refused = Generate(*no_store.gateway, turn("hi", 2));
  EXPECT_EQ(refused.status.code(), absl::StatusCode::kFailedPrecondition) << refused.status;
  EXPECT_EQ(refused.router_calls, 0);
}

TEST(GatewayTest, ValidationRefusesBeforeAnyRouterIsCalled) {
  LocalRouter router(kModel);
  TestGateway gw({router.address()});
  Answer a = Generate(*gw.gateway, TextRequest("hi", 0));
  EXPECT_EQ(a.status.code(), absl::StatusCode::kInvalidArgument) << a.status;
  EXPECT_NE(a.status.message().find("max_tokens must be >= 1"), absl::string_view::npos) << a.status;
  a = Generate(*gw.gateway, TextRequest("", 4));
  EXPECT_EQ(a.status.code(), absl::StatusCode::kInvalidArgument) << a.status;
  EXPECT_NE(a.status.message().find("text: the prompt is empty"), absl::string_view::npos) << a.status;
  EXPECT_EQ(a.router_calls, 0);
  EXPECT_EQ(a.responses, 0);
  EXPECT_EQ(router.Status().requests_total(), 0);
  EXPECT_EQ(gw.gateway->in_flight(), 0);
}

// Bounds that cost nothing come before tokenizing: a megabyte of text for a
// 1,024-token context is refused by its size (issue #18).
TEST(GatewayTest, AnOversizedPromptIsRefusedBeforeItIsTokenized) {
  LocalRouter router(kModel);
  TestGateway gw({router.address()});
  Answer a = Generate(*gw.gateway, TextRequest(std::string(1 << 20, 'a'), 4));
  EXPECT_EQ(a.status.code(), absl::StatusCode::kInvalidArgument) << a.status;
  EXPECT_NE(a.status.message().find("bytes cannot fit the context"), absl::string_view::npos) << a.status;
  a = Generate(*gw.gateway, TextRequest("hi", 1024));
  EXPECT_EQ(a.status.code(), absl::StatusCode::kInvalidArgument) << a.status;
  EXPECT_NE(a.status.message().find("leaves no room for a prompt"), absl::string_view::npos) << a.status;
  EXPECT_EQ(a.router_calls, 0);
}

TEST(GatewayTest, AdmissionRefusesAtTheLimit) {
  LocalRouter router(kModel);
  TestGateway gw({router.address()}, /*max_in_flight=*/1);
  absl::Notification streaming, leave;
  v1::GenerateRequest slow = TextRequest("Once upon a time", 1000);
  slow.set_ignore_eos(true);
  Answer first;
  // The first client holds its first response until told to leave.
  std::thread client([&] {
    first = Generate(*gw.gateway, slow, [&](const v1::GenerateResponse&) {
      streaming.Notify();
      leave.WaitForNotification();
      return false;
    });
  });
  streaming.WaitForNotification();
  EXPECT_EQ(gw.gateway->in_flight(), 1);
  Answer refused = Generate(*gw.gateway, TextRequest("hi", 2));
  EXPECT_EQ(refused.status.code(), absl::StatusCode::kResourceExhausted) << refused.status;
  EXPECT_EQ(refused.status.message(), "the gateway is at its limit of 1 requests in progress; retry later");
  EXPECT_EQ(refused.router_calls, 0);
  leave.Notify();
  client.join();
  EXPECT_EQ(first.status.code(), absl::StatusCode::kCancelled) << first.status;
  EXPECT_EQ(gw.gateway->in_flight(), 0);
  EXPECT_TRUE(Generate(*gw.gateway, TextRequest("hi", 2)).status.ok());  // room again
}

TEST(GatewayTest, ASinkThatReturnsFalseCancelsTheRequest) {
  LocalRouter router(kModel);
  TestGateway gw({router.address()});
  v1::GenerateRequest slow = TextRequest("Once upon a time", 1000);
  slow.set_ignore_eos(true);
  Answer a = Generate(*gw.gateway, slow, [](const v1::GenerateResponse&) { return false; });
  EXPECT_EQ(a.status.code(), absl::StatusCode::kCancelled) << a.status;
  EXPECT_EQ(a.status.message(), "the client went away");
  EXPECT_EQ(a.responses, 1);
  // The router call was cancelled: the router drops the request and its cache.
  WaitUntilIdle(router);
  EXPECT_EQ(router.Status().running_requests(), 0);
  EXPECT_EQ(router.Status().kv_cache_blocks_used(), 0);
}

TEST(GatewayTest, FailsOverToTheNextRouterWhenOneIsDown) {
  LocalRouter live(kModel);
  TestGateway gw({kDeadRouter, live.address()});
  // A session whose home is the dead router, so that it is tried first.
  std::string session;
  for (int s = 0; session.empty(); ++s) {
    const std::string id = "session-" + std::to_string(s);
    if (gw.pool.Choose(id).order[0] == 0) session = id;
  }
  v1::GenerateRequest req = TextRequest("Hello", 3);
  req.set_session_id(session);
  Answer a = Generate(*gw.gateway, req);
  ASSERT_TRUE(a.status.ok()) << a.status;
  EXPECT_EQ(a.router_calls, 2);  // the dead one, then the live one
  EXPECT_EQ(a.ids.size(), 3u);
  EXPECT_EQ(live.Status().requests_total(), 1);
}

TEST(GatewayTest, UnavailableWhenEveryRouterIsDown) {
  TestGateway gw({kDeadRouter, kDeadRouter});
  Answer a = Generate(*gw.gateway, TextRequest("Hello", 3));
  EXPECT_EQ(a.status.code(), absl::StatusCode::kUnavailable) << a.status;
  EXPECT_NE(a.status.message().find("no router could take the request: "), absl::string_view::npos) << a.status;
  EXPECT_EQ(a.router_calls, 2);
  EXPECT_EQ(a.responses, 0);
}

TEST(GatewayTest, TokenizeDetokenizeAndListModels) {
  TestGateway gw({kDeadRouter});
  v1::TokenizeRequest tr;
  tr.set_text("你好, world");
  v1::TokenizeResponse tokens;
  ASSERT_TRUE(gw.gateway->Tokenize(tr, &tokens).ok());
  EXPECT_EQ(std::vector<int>(tokens.ids().begin(), tokens.ids().end()), *gw.tokenizer->Encode("你好, world", false));
  v1::DetokenizeRequest dr;
  *dr.mutable_ids() = tokens.ids();
  v1::DetokenizeResponse text;
  ASSERT_TRUE(gw.gateway->Detokenize(dr, &text).ok());
  EXPECT_EQ(text.text(), "你好, world");
  dr.add_ids(-5);
  absl::Status st = gw.gateway->Detokenize(dr, &text);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("ids: -5 is outside"), absl::string_view::npos) << st;
  tr.set_model("gpt-4");
  EXPECT_EQ(gw.gateway->Tokenize(tr, &tokens).code(), absl::StatusCode::kNotFound);
  v1::ListModelsResponse models;
  ASSERT_TRUE(gw.gateway->ListModels(v1::ListModelsRequest(), &models).ok());
  ASSERT_EQ(models.models_size(), 1);
  EXPECT_EQ(models.models(0).name(), "fortune-moe");
}

TEST(GatewayTest, WithoutATokenizerOnlyTokenIds) {
  auto config = LoadModelConfig(kModel);
  ServedModel model{"fortune-moe", "deepseek_v3", config->vocab_size, config->context_length()};
  RouterPool pool({kDeadRouter});
  Gateway gw(nullptr, model, &pool, {});
  Answer a = Generate(gw, TextRequest("hi", 2));
  EXPECT_EQ(a.status.code(), absl::StatusCode::kFailedPrecondition) << a.status;
  EXPECT_EQ(a.router_calls, 0);
  v1::TokenizeResponse tokens;
  EXPECT_EQ(gw.Tokenize(v1::TokenizeRequest(), &tokens).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace moemesh
