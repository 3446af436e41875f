// The OpenAI-compatible HTTP API over a real socket, in front of a gateway
// and a real router on loopback.
#include "services/gateway/http_front_end.h"

#include <httplib.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/jinja/chat_template.h"
#include "core/model/config.h"
#include "core/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "prometheus/counter.h"
#include "prometheus/registry.h"
#include "services/common/test_certs.h"
#include "services/gateway/gateway_test_util.h"
#include "services/common/http_tls.h"

namespace moemesh {
namespace {

using Json = nlohmann::json;
constexpr char kModel[] = "models/fortune-moe";

class HttpFrontEndTest : public ::testing::Test {
 protected:
  void SetUp() override {
    demo_ = std::make_unique<DemoGateway>();
    tokenizer_ = demo_->tokenizer.get();
    gateway_ = demo_->gateway.get();
    registry_ = std::make_shared<prometheus::Registry>();
    prometheus::BuildCounter().Name("test_counter_total").Help("t").Register(*registry_).Add({}).Increment();
    auto t = jinja::ChatTemplate::Load(kModel);
    ASSERT_TRUE(t.ok()) << t.status();
    chat_template_ = std::move(*t);
    HttpFrontEnd::Options o;
    o.chat_template = chat_template_.get();
    auto fe = HttpFrontEnd::Start(o, gateway_, registry_);
    ASSERT_TRUE(fe.ok()) << fe.status();
    front_ = std::move(*fe);
    client_ = std::make_unique<httplib::Client>("127.0.0.1", front_->port());
  }

  // The gRPC path's answer, for comparison.
  std::string GrpcText(const v1::GenerateRequest& req) {
    std::string text;
    absl::Status st = gateway_->Generate(
        req, [] { return std::make_unique<grpc::ClientContext>(); },
        [&](const v1::GenerateResponse& r) {
          text += r.text_delta();
          return true;
        });
    EXPECT_TRUE(st.ok()) << st;
    return text;
  }

  std::unique_ptr<DemoGateway> demo_;
  const Tokenizer* tokenizer_ = nullptr;
  Gateway* gateway_ = nullptr;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<jinja::ChatTemplate> chat_template_;
  std::unique_ptr<HttpFrontEnd> front_;
  std::unique_ptr<httplib::Client> client_;
};

TEST_F(HttpFrontEndTest, CompletionEqualsTheGrpcAnswer) {
  auto res = client_->Post("/v1/completions",
                           R"({"model": "fortune-moe", "prompt": "Life is", "max_tokens": 12, "temperature": 0})",
                           "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  Json j = Json::parse(res->body);
  v1::GenerateRequest same;
  same.set_text("Life is");
  same.set_max_tokens(12);
  same.mutable_sampling()->set_temperature(0);
  EXPECT_EQ(j["choices"][0]["text"], GrpcText(same));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["completion_tokens"], 12);
  EXPECT_EQ(j["usage"]["prompt_tokens"], static_cast<int>(tokenizer_->Encode("Life is", true)->size()));
  EXPECT_EQ(j["model"], "fortune-moe");
  EXPECT_EQ(j["id"].get<std::string>().rfind("cmpl-", 0), 0u);
}

TEST_F(HttpFrontEndTest, StreamsServerSentEventsWithUsageLast) {
  std::string body;
  httplib::Headers headers;
  auto res = client_->Post(
      "/v1/completions", headers,
      R"({"prompt": "The best way to", "max_tokens": 10, "temperature": 0, "stream": true,
          "stream_options": {"include_usage": true}})",
      "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/event-stream");
  std::vector<std::string> events = absl::StrSplit(res->body, "\n\n", absl::SkipEmpty());
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "data: [DONE]");
  std::string text;
  std::string finish;
  for (size_t i = 0; i + 2 < events.size(); ++i) {
    ASSERT_EQ(events[i].rfind("data: ", 0), 0u) << events[i];
    Json c = Json::parse(events[i].substr(6));
    text += c["choices"][0]["text"].get<std::string>();
    if (!c["choices"][0]["finish_reason"].is_null()) finish = c["choices"][0]["finish_reason"];
  }
  Json usage = Json::parse(events[events.size() - 2].substr(6));
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 10);
  EXPECT_EQ(finish, "length");
  v1::GenerateRequest same;
  same.set_text("The best way to");
  same.set_max_tokens(10);
  same.mutable_sampling()->set_temperature(0);
  EXPECT_EQ(text, GrpcText(same));
}

// Log probabilities in OpenAI's legacy form: one entry per token, the
// sampled token's among its top ones (greedy: the likeliest), offsets into
// the text.
TEST_F(HttpFrontEndTest, CompletionLogprobs) {
  auto res = client_->Post("/v1/completions", R"({"prompt": "Life is", "max_tokens": 5, "temperature": 0,
                                                  "logprobs": 3})",
                           "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  Json choice = Json::parse(res->body)["choices"][0];
  Json lp = choice["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), 5u) << res->body;
  ASSERT_EQ(lp["token_logprobs"].size(), 5u);
  ASSERT_EQ(lp["top_logprobs"].size(), 5u);
  std::string joined;
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(lp["text_offset"][i].get<size_t>(), joined.size());
    joined += lp["tokens"][i].get<std::string>();
    const Json& top = lp["top_logprobs"][i];
    EXPECT_LE(top.size(), 3u);
    ASSERT_TRUE(top.contains(lp["tokens"][i].get<std::string>())) << top;
    EXPECT_FLOAT_EQ(top[lp["tokens"][i].get<std::string>()].get<float>(), lp["token_logprobs"][i].get<float>());
    EXPECT_LE(lp["token_logprobs"][i].get<float>(), 0.0f);
  }
  EXPECT_EQ(joined, choice["text"]);
  res = client_->Post("/v1/completions", R"({"prompt": "x", "logprobs": 21})", "application/json");
  EXPECT_EQ(res->status, 400);
}

// n choices, each sampled with seed + its index: choice i equals a single
// request with that seed; streamed, every choice's chunks carry its index.
TEST_F(HttpFrontEndTest, SeveralChoices) {
  auto res = client_->Post("/v1/completions",
                           R"({"prompt": "Life is", "max_tokens": 6, "n": 3, "seed": 10, "temperature": 1.0})",
                           "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  Json j = Json::parse(res->body);
  ASSERT_EQ(j["choices"].size(), 3u);
  EXPECT_EQ(j["usage"]["completion_tokens"], 18);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(j["choices"][i]["index"], i);
    v1::GenerateRequest one;
    one.set_text("Life is");
    one.set_max_tokens(6);
    one.mutable_sampling()->set_temperature(1.0f);
    one.mutable_sampling()->set_seed(10 + i);
    EXPECT_EQ(j["choices"][i]["text"], GrpcText(one)) << i;
  }
  res = client_->Post("/v1/completions",
                      R"({"prompt": "Life is", "max_tokens": 6, "n": 2, "seed": 10, "stream": true,
                          "stream_options": {"include_usage": true}})",
                      "application/json");
  ASSERT_EQ(res->status, 200) << res->body;
  std::vector<std::string> events = absl::StrSplit(res->body, "\n\n", absl::SkipEmpty());
  std::string texts[2];
  for (size_t i = 0; i + 2 < events.size(); ++i) {
    Json c = Json::parse(events[i].substr(6));
    texts[c["choices"][0]["index"].get<int>()] += c["choices"][0]["text"].get<std::string>();
  }
  EXPECT_EQ(texts[0], j["choices"][0]["text"]);
  EXPECT_EQ(texts[1], j["choices"][1]["text"]);
  EXPECT_EQ(Json::parse(events[events.size() - 2].substr(6))["usage"]["completion_tokens"], 12);
  EXPECT_EQ(events.back(), "data: [DONE]");
}

// echo: the text begins with the prompt, as sent or decoded from ids.
TEST_F(HttpFrontEndTest, EchoPrependsThePrompt) {
  auto plain = client_->Post("/v1/completions", R"({"prompt": "Life is", "max_tokens": 5, "temperature": 0})",
                             "application/json");
  auto echoed = client_->Post("/v1/completions",
                              R"({"prompt": "Life is", "max_tokens": 5, "temperature": 0, "echo": true})",
                              "application/json");
  ASSERT_TRUE(plain && echoed);
  ASSERT_EQ(echoed->status, 200) << echoed->body;
  const std::string answer = Json::parse(plain->body)["choices"][0]["text"];
  EXPECT_EQ(Json::parse(echoed->body)["choices"][0]["text"], "Life is" + answer);
  const std::vector<int> ids = *tokenizer_->Encode("Life is", true);  // the text prompt's ids
  auto streamed = client_->Post("/v1/completions",
                                Json({{"prompt", ids}, {"max_tokens", 5}, {"temperature", 0}, {"echo", true},
                                      {"stream", true}})
                                    .dump(),
                                "application/json");
  ASSERT_EQ(streamed->status, 200) << streamed->body;
  std::vector<std::string> events = absl::StrSplit(streamed->body, "\n\n", absl::SkipEmpty());
  std::string text;
  for (size_t i = 0; i + 1 < events.size(); ++i) text += Json::parse(events[i].substr(6))["choices"][0]["text"];
  EXPECT_EQ(text, *tokenizer_->Decode(ids, true) + answer);
}

TEST_F(HttpFrontEndTest, ErrorsAreOpenAiErrorsWithTheRightStatus) {
  auto res = client_->Post("/v1/completions", R"({"prompt": "hi", "max_tokens": 1000000})", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  Json j = Json::parse(res->body);
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_NE(j["error"]["message"].get<std::string>().find("context"), std::string::npos) << res->body;
  // Streams are checked before their first byte, too.
  res = client_->Post("/v1/completions", R"({"prompt": "", "stream": true})", "application/json");
  EXPECT_EQ(res->status, 400);
  EXPECT_NE(res->body.find("prompt: the prompt is empty"), std::string::npos) << res->body;
  res = client_->Post("/v1/completions", R"({"prompt": "hi", "model": "gpt-4"})", "application/json");
  EXPECT_EQ(res->status, 404);
  res = client_->Post("/v1/completions", "{", "application/json");
  EXPECT_EQ(res->status, 400);
  res = client_->Get("/v1/nothing");
  EXPECT_EQ(res->status, 404);
  // A 10 MB prompt is read (under the 16 MiB bound) and refused before any
  // tokenizing: far past what the context holds.
  res = client_->Post("/v1/completions", Json({{"prompt", std::string(10 << 20, 'a')}}).dump(), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_NE(res->body.find("prompt"), std::string::npos) << res->body.substr(0, 200);
  res = client_->Post("/v1/completions", R"({"prompt": "hi", "max_tokens": -3})", "application/json");
  EXPECT_EQ(res->status, 400);
  EXPECT_NE(res->body.find("max_tokens"), std::string::npos) << res->body;
}

TEST_F(HttpFrontEndTest, ModelsTokenizeDetokenizeHealthAndMetrics) {
  auto res = client_->Get("/v1/models");
  ASSERT_TRUE(res);
  Json j = Json::parse(res->body);
  EXPECT_EQ(j["object"], "list");
  EXPECT_EQ(j["data"][0]["id"], "fortune-moe");
  EXPECT_GT(j["data"][0]["max_model_len"].get<int>(), 0);

  res = client_->Post("/tokenize", R"({"prompt": "Life is"})", "application/json");
  ASSERT_EQ(res->status, 200) << res->body;
  j = Json::parse(res->body);
  EXPECT_EQ(j["tokens"].get<std::vector<int>>(), *tokenizer_->Encode("Life is", true));
  EXPECT_EQ(j["count"], j["tokens"].size());
  res = client_->Post("/detokenize", Json({{"tokens", j["tokens"]}}).dump(), "application/json");
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_NE(Json::parse(res->body)["prompt"].get<std::string>().find("Life is"), std::string::npos);
  for (const char* bad : {R"({"text": "x"})", R"({"prompt": "x", "model": 3})",
                          R"({"prompt": "x", "add_special_tokens": "yes"})"}) {
    res = client_->Post("/tokenize", bad, "application/json");
    EXPECT_EQ(res->status, 400) << bad << " " << res->body;
  }
  for (const char* bad : {R"({"tokens": [1, 99999999999]})", R"({"tokens": "1"})", R"({"tokens": [1], "model": []})"}) {
    res = client_->Post("/detokenize", bad, "application/json");
    EXPECT_EQ(res->status, 400) << bad << " " << res->body;
  }
  // A body past the bound is refused, not read.
  res = client_->Post("/v1/completions", std::string(17 << 20, ' '), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 413);

  res = client_->Get("/health");
  EXPECT_EQ(res->status, 200);
  res = client_->Get("/metrics");
  EXPECT_EQ(res->status, 200);
  EXPECT_NE(res->body.find("test_counter_total 1"), std::string::npos) << res->body;
}

// A burst of new clients is served, none refused or reset (cpp-httplib's
// own listen backlog is 5).
TEST_F(HttpFrontEndTest, ABurstOfClientsIsServed) {
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int i = 0; i < 96; ++i) {
    clients.emplace_back([&] {
      httplib::Client c("127.0.0.1", front_->port());
      auto res = c.Post("/tokenize", R"({"prompt": "Life is"})", "application/json");
      ok += res && res->status == 200;
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok.load(), 96);
}

constexpr char kChat[] = R"("messages": [{"role": "system", "content": "Be wise."},
                                        {"role": "user", "content": [{"type": "text", "text": "What is"},
                                                                     {"type": "text", "text": "life?"}]}])";

// A chat completion is the completion of its rendered template: the same
// tokens as the gRPC API given the prompt that /tokenize reports for the
// same messages (the template's own <|bos|>, no other special token added).
TEST_F(HttpFrontEndTest, ChatCompletionIsTheCompletionOfItsRenderedTemplate) {
  auto tok = client_->Post("/tokenize", absl::StrCat("{", kChat, R"(, "add_generation_prompt": true})"),
                           "application/json");
  ASSERT_EQ(tok->status, 200) << tok->body;
  const std::vector<int> ids = Json::parse(tok->body)["tokens"].get<std::vector<int>>();
  EXPECT_EQ(ids, *tokenizer_->Encode("<|bos|>Be wise.\nWhat is\nlife?\n", false));
  auto res = client_->Post(
      "/v1/chat/completions",
      absl::StrCat("{", kChat, R"(, "model": "fortune-moe", "max_completion_tokens": 12, "temperature": 0})"),
      "application/json");
  ASSERT_EQ(res->status, 200) << res->body;
  Json j = Json::parse(res->body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  v1::GenerateRequest same;
  *same.mutable_token_ids()->mutable_ids() = {ids.begin(), ids.end()};
  same.set_max_tokens(12);
  same.mutable_sampling()->set_temperature(0);
  EXPECT_EQ(j["choices"][0]["message"]["content"], GrpcText(same));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["prompt_tokens"], static_cast<int>(ids.size()));
  EXPECT_EQ(j["usage"]["completion_tokens"], 12);
}

TEST_F(HttpFrontEndTest, ChatStreamsDeltasRoleFirstUsageLast) {
  const std::string body = absl::StrCat("{", kChat, R"(, "max_tokens": 9, "temperature": 0, "n": 2,
      "logprobs": true, "top_logprobs": 2})");
  auto whole = client_->Post("/v1/chat/completions", body, "application/json");
  ASSERT_EQ(whole->status, 200) << whole->body;
  const Json w = Json::parse(whole->body);
  auto res = client_->Post("/v1/chat/completions",
                           body.substr(0, body.size() - 1) +
                               R"(, "stream": true, "stream_options": {"include_usage": true}})",
                           "application/json");
  ASSERT_EQ(res->status, 200) << res->body;
  std::vector<std::string> events = absl::StrSplit(res->body, "\n\n", absl::SkipEmpty());
  ASSERT_GE(events.size(), 5u);
  EXPECT_EQ(events.back(), "data: [DONE]");
  std::string text[2], finish[2];
  int roles[2] = {0, 0}, tokens[2] = {0, 0};
  for (size_t i = 0; i + 2 < events.size(); ++i) {
    Json c = Json::parse(events[i].substr(6));
    EXPECT_EQ(c["object"], "chat.completion.chunk");
    const Json& choice = c["choices"][0];
    const int k = choice["index"];
    if (choice["delta"].contains("role")) {
      EXPECT_EQ(choice["delta"]["role"], "assistant");
      EXPECT_EQ(text[k], "") << "the role comes first";
      ++roles[k];
    }
    if (choice["delta"].contains("content")) text[k] += choice["delta"]["content"].get<std::string>();
    if (!choice["logprobs"].is_null()) {
      for (const Json& t : choice["logprobs"]["content"]) {
        EXPECT_EQ(t["top_logprobs"].size(), 2u);
        EXPECT_EQ(t["bytes"].size(), t["token"].get<std::string>().size());
        ++tokens[k];
      }
    }
    if (!choice["finish_reason"].is_null()) {
      EXPECT_TRUE(choice["delta"].empty()) << "chat's last chunk carries the reason alone";
      finish[k] = choice["finish_reason"];
    }
  }
  for (int k = 0; k < 2; ++k) {
    EXPECT_EQ(roles[k], 1);
    EXPECT_EQ(tokens[k], 9);
    EXPECT_EQ(finish[k], "length");
    EXPECT_EQ(text[k], w["choices"][k]["message"]["content"]);  // greedy: both choices and both forms agree
    EXPECT_EQ(w["choices"][k]["logprobs"]["content"].size(), 9u);
  }
  EXPECT_EQ(Json::parse(events[events.size() - 2].substr(6))["usage"]["completion_tokens"], 18);
}

TEST_F(HttpFrontEndTest, ChatErrorsSayWhatIsWrong) {
  const std::pair<std::string, std::string> cases[] = {
      {R"({"messages": []})", "messages: a non-empty list"},
      {R"({"messages": [{"content": "x"}]})", "messages[0].role"},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]})",
       "messages[0].content[0]: only"},
      {R"({"messages": [{"role": "tool", "content": "42"}]})", "fortune-moe takes system, user and assistant"},
      {R"({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"})", "tool_choice"},
      {R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3})", "needs logprobs: true"},
      {R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0})", "max_tokens: must be >= 1"},
      {R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000})", "context"},
      {R"({"messages": [{"role": "user", "content": "x"}], "echo": true})", "echo: is for /v1/completions"},
      {R"({"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": 3})", "chat_template_kwargs"},
  };
  for (const auto& [body, message] : cases) {
    auto res = client_->Post("/v1/chat/completions", body, "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 400) << body << " " << res->body;
    EXPECT_NE(res->body.find(message), std::string::npos) << body << " " << res->body;
  }
  // A model without a template says so.
  auto fe = HttpFrontEnd::Start({}, gateway_, nullptr);
  ASSERT_TRUE(fe.ok());
  httplib::Client other("127.0.0.1", (*fe)->port());
  auto res = other.Post("/v1/chat/completions", absl::StrCat("{", kChat, "}"), "application/json");
  EXPECT_EQ(res->status, 400);
  EXPECT_NE(res->body.find("--chat-template"), std::string::npos) << res->body;
}

// With the mesh's certificate (the gateway's --tls-cert and --tls-key) the
// API is served over HTTPS, and plain HTTP on its port gets nothing.
TEST_F(HttpFrontEndTest, ServesHttpsWithTheMeshCertificate) {
  const TestCerts& certs = TestCerts::Get(::testing::TempDir());
  TlsConfig config{certs.Pem("server"), certs.Key("server"), ""};
  config.client_auth = false;
  auto tls = HttpTls::Create(config);
  ASSERT_TRUE(tls.ok()) << tls.status();
  HttpFrontEnd::Options o;
  o.tls = *tls;
  auto fe = HttpFrontEnd::Start(o, gateway_, registry_);
  ASSERT_TRUE(fe.ok()) << fe.status();
  httplib::SSLClient https("127.0.0.1", (*fe)->port());
  https.set_ca_cert_path(certs.Pem("ca").c_str());
  https.enable_server_certificate_verification(true);
  auto res = https.Post("/v1/completions",
                        R"({"model": "fortune-moe", "prompt": "Life is", "max_tokens": 4, "temperature": 0})",
                        "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;
  httplib::Client plain("127.0.0.1", (*fe)->port());
  plain.set_read_timeout(3);
  auto refused = plain.Get("/health");
  EXPECT_FALSE(refused && refused->status == 200);
}

}  // namespace
}  // namespace moemesh
