#include "services/gateway/openai_api.h"

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

using Json = nlohmann::json;

TEST(OpenAiApiTest, ParsesACompletionRequest) {
  absl::StatusOr<CompletionRequest> r = ParseCompletionRequest(R"({
    "model": "fortune-moe", "prompt": "Life is", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9,
    "top_k": -1, "min_p": 0.1, "seed": 3, "stop": ["\n", "."], "presence_penalty": 0.5,
    "frequency_penalty": -0.5, "repetition_penalty": 1.1, "ignore_eos": true, "skip_special_tokens": false,
    "session_id": "s", "user": "u", "stream": true, "stream_options": {"include_usage": true},
    "some_future_field": 1})");
  ASSERT_TRUE(r.ok()) << r.status();
  const v1::GenerateRequest& g = r->request;
  EXPECT_EQ(g.model(), "fortune-moe");
  EXPECT_EQ(g.text(), "Life is");
  EXPECT_EQ(g.max_tokens(), 7);
  EXPECT_FLOAT_EQ(g.sampling().temperature(), 0.5f);
  EXPECT_FLOAT_EQ(g.sampling().top_p(), 0.9f);
  EXPECT_EQ(g.sampling().top_k(), 0);  // vLLM's -1: off
  EXPECT_FLOAT_EQ(g.sampling().min_p(), 0.1f);
  EXPECT_EQ(g.sampling().seed(), 3u);
  EXPECT_FLOAT_EQ(g.sampling().repetition_penalty(), 1.1f);
  ASSERT_EQ(g.stop_size(), 2);
  EXPECT_EQ(g.stop(1), ".");
  EXPECT_TRUE(g.ignore_eos());
  EXPECT_FALSE(g.skip_special_tokens());
  EXPECT_EQ(g.session_id(), "s");
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);

  r = ParseCompletionRequest(R"({"prompt": "a", "seed": 18446744073709551615})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->request.sampling().seed(), 18446744073709551615u);
  r = ParseCompletionRequest(R"({"prompt": [1, 2, 3]})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->request.token_ids().ids_size(), 3);
  EXPECT_EQ(r->request.max_tokens(), 16);  // OpenAI's default
  EXPECT_FALSE(r->request.sampling().has_temperature());
  r = ParseCompletionRequest(R"({"prompt": ["one"], "stop": "x"})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->request.text(), "one");
  EXPECT_EQ(r->request.stop(0), "x");
}

TEST(OpenAiApiTest, RefusesWhatItCannotServeNamingTheField) {
  struct Case {
    const char* body;
    const char* field;
  } cases[] = {
      {"not json", "JSON"},
      {"[1]", "object"},
      {R"({})", "prompt"},
      {R"({"prompt": 3})", "prompt"},
      {R"({"prompt": ["a", "b"]})", "prompt"},
      {R"({"prompt": [1, "b"]})", "prompt"},
      {R"({"prompt": "a", "max_tokens": "3"})", "max_tokens"},
      {R"({"prompt": "a", "max_tokens": 0})", "max_tokens"},
      {R"({"prompt": "a", "temperature": "hot"})", "temperature"},
      {R"({"prompt": "a", "n": 0})", "n"},
      {R"({"prompt": "a", "n": 17})", "n"},
      {R"({"prompt": "a", "n": 2, "session_id": "s", "continue_session": true})", "n"},
      {R"({"prompt": "a", "echo": true, "logprobs": 1})", "echo"},
      {R"({"prompt": "a", "logprobs": "2"})", "logprobs"},
      {R"({"prompt": "a", "stop": [1]})", "stop"},
      {R"({"prompt": "a", "seed": -1})", "seed"},
      {R"({"prompt": "a", "seed": 1.5})", "seed"},
      {R"({"prompt": "a", "top_k": 4294967297})", "top_k"},
      {R"({"prompt": "a", "temperature": 1e39})", "temperature"},
      {R"({"prompt": "a", "stream_options": {"include_usage": true}})", "stream_options"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<CompletionRequest> r = ParseCompletionRequest(c.body);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.body;
    EXPECT_NE(r.status().message().find(c.field), absl::string_view::npos) << c.body << ": " << r.status();
  }
}

TEST(OpenAiApiTest, AnswersInOpenAisShapes) {
  CompletionIds ids{"cmpl-1", 1700000000, "m"};
  v1::Usage usage;
  usage.set_prompt_tokens(3);
  usage.set_completion_tokens(4);
  Json j = Json::parse(CompletionJson(
      ids, {{"hello", v1::FINISH_REASON_LENGTH, ""}, {"bye", v1::FINISH_REASON_STOP, ""}}, usage));
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["text"], "hello");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["choices"][1]["index"], 1);
  EXPECT_EQ(j["choices"][1]["finish_reason"], "stop");
  EXPECT_EQ(j["usage"]["total_tokens"], 7);

  const std::string chunk = CompletionChunkEvent(ids, 2, {"he", v1::FINISH_REASON_UNSPECIFIED, ""});
  ASSERT_EQ(chunk.rfind("data: ", 0), 0u);
  ASSERT_EQ(chunk.substr(chunk.size() - 2), "\n\n");
  j = Json::parse(chunk.substr(6));
  EXPECT_TRUE(j["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(j["choices"][0]["index"], 2);
  j = Json::parse(UsageChunkEvent(ids, usage).substr(6));
  EXPECT_TRUE(j["choices"].empty());
  EXPECT_EQ(j["usage"]["completion_tokens"], 4);

  EXPECT_EQ(HttpStatusFor(absl::InvalidArgumentError("x")), 400);
  EXPECT_EQ(HttpStatusFor(absl::NotFoundError("x")), 404);
  EXPECT_EQ(HttpStatusFor(absl::ResourceExhaustedError("x")), 429);
  EXPECT_EQ(HttpStatusFor(absl::UnavailableError("x")), 503);
  j = Json::parse(ErrorJson(absl::InvalidArgumentError("text: the prompt is empty")));
  EXPECT_EQ(j["error"]["message"], "prompt: the prompt is empty");  // the request's own field name
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
}

// A chat request's template variables: messages as the template expects
// them (text parts joined, tool arguments as objects, key order kept),
// tools, documents, add_generation_prompt, and chat_template_kwargs.
TEST(OpenAiApiTest, ParsesAChatRequestIntoTemplateVariables) {
  absl::StatusOr<CompletionRequest> r = ParseChatRequest(R"({
    "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                 {"role": "assistant", "content": null, "tool_calls": [{"type": "function",
                   "function": {"name": "f", "arguments": "{\"z\": 1, \"a\": [2]}"}}]},
                 {"role": "tool", "content": "3", "tool_call_id": "c1"}],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"z": 1, "a": 2}}}],
    "chat_template_kwargs": {"enable_thinking": false}, "logprobs": true, "top_logprobs": 3,
    "max_completion_tokens": 5})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->chat);
  EXPECT_EQ(r->request.max_tokens(), 5);
  EXPECT_EQ(r->request.logprobs(), 3);
  EXPECT_EQ(r->top_logprobs, 3);
  const nlohmann::ordered_json& c = r->template_context;
  EXPECT_EQ(c["messages"][0]["content"], "a\nb");
  EXPECT_EQ(c["messages"][1]["tool_calls"][0]["function"]["arguments"].dump(), R"({"z":1,"a":[2]})");
  EXPECT_EQ(c["tools"][0]["function"]["parameters"].dump(), R"({"z":1,"a":2})");
  EXPECT_TRUE(c["documents"].is_null());
  EXPECT_EQ(c["add_generation_prompt"], true);
  EXPECT_EQ(c["enable_thinking"], false);

  r = ParseChatRequest(R"({"messages": [{"role": "user", "content": "x"}]})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->request.max_tokens(), 0);  // the rest of the context
  EXPECT_EQ(r->request.logprobs(), 0);
  EXPECT_TRUE(r->template_context["tools"].is_null());
  r = ParseChatRequest(R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true})");
  EXPECT_EQ(r->request.logprobs(), 1);  // the sampled token's, no alternatives
  r = ParseChatRequest(R"({"messages": [{"role": "assistant", "content": "Once"}], "continue_final_message": true})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->continue_final_message);
  EXPECT_EQ(r->template_context["add_generation_prompt"], false);
}

// Found by fuzz/request_fuzzer.cc: a part whose "type" is not a string
// threw out of the parser.
TEST(OpenAiApiTest, MalformedContentPartsAreRefusedNotThrown) {
  for (const char* body : {R"({"messages": [{"role": "user", "content": [{"type": 3, "text": "x"}]}]})",
                           R"({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]})",
                           R"({"messages": [{"role": "user", "content": [null]}]})"}) {
    absl::StatusOr<CompletionRequest> r = ParseChatRequest(body);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << body;
  }
}

TEST(OpenAiApiTest, ContinuesTheFinalMessageWhereItsTextEnds) {
  const auto messages = nlohmann::ordered_json::parse(R"([{"role": "assistant", "content": " Once upon "}])");
  absl::StatusOr<std::string> cut = CutAfterFinalMessage("<s>[A] Once upon </s>\n", messages);
  ASSERT_TRUE(cut.ok()) << cut.status();
  EXPECT_EQ(*cut, "<s>[A] Once upon");
  EXPECT_FALSE(CutAfterFinalMessage("<s>nothing</s>", messages).ok());
}

}  // namespace
}  // namespace moemesh
