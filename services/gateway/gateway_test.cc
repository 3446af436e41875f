// The gateway's logic driven directly, without a gateway server: requests
// go to real routers over loopback sockets.
#include "services/gateway/gateway.h"

#include <chrono>
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

  explicit TestGateway(const std::vector<std::string>& routers, int max_in_flight = 512) : pool(routers) {
    tokenizer = std::move(*LoadTokenizer(kModel));
    auto config = LoadModelConfig(kModel);
    ServedModel model{"fortune-moe", "deepseek_v3", config->vocab_size, config->context_length()};
    gateway = std::make_unique<Gateway>(tokenizer.get(), model, &pool, Gateway::Options{max_in_flight});
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

// Waits up to 5 s for the router to hold no request.
void WaitUntilIdle(LocalRouter& router) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (router.Status().running_requests() != 0 && std::chrono::steady_clock::now() < deadline) {
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
    if (gw.pool.Order(id)[0] == 0) session = id;
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
