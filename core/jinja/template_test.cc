// What the differential test cannot show: templates refused when they are
// loaded, with the line; limits on hostile templates; concurrent renders;
// finding a model's template. (Rendering itself is checked against Python's
// Jinja2 in jinja2_differential_test.)
#include "core/jinja/template.h"

#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/common/file_util.h"
#include "core/jinja/chat_template.h"
#include "gtest/gtest.h"

namespace moemesh::jinja {
namespace {

using Json = nlohmann::ordered_json;

absl::Status ParseError(const std::string& source) {
  auto t = ChatTemplate::FromSource(source);
  return t.ok() ? absl::OkStatus() : t.status();
}

TEST(TemplateTest, RefusesAtLoadWhatItCannotRun) {
  const std::pair<std::string, std::string> cases[] = {
      {"{{ x | no_such_filter }}", "no filter named 'no_such_filter'"},
      {"{% if x is frobnicated %}{% endif %}", "no test named 'frobnicated'"},
      {"a\nb\n{% frob %}", "line 3: encountered unknown tag 'frob'"},
      {"{% include 'other.jinja' %}", "'include' is not supported"},
      {"{% for x in y %}\n{{ x }}", "expected 'endfor'"},
      {"{% if x %}{% endfor %}", "unknown tag 'endfor'"},
      {"{{ x ", "expected '}}'"},
      {"{{ 'unterminated }}", "unterminated string"},
      {"{% break %}", "'break' outside of a loop"},
      {"{{ (x }}", "expected ')'"},
      {"{{ f(a=1, 2) }}", "positional argument after keyword argument"},
      {"{# never closed", "missing end of comment tag"},
      {"{{ x if }}", "expected an expression"},
      {"{% set = 3 %}", "expected a name"},
      {"{{ 99999999999999999999 }}", "integer literal out of range"},
  };
  for (const auto& [source, message] : cases) {
    const absl::Status st = ParseError(source);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << source;
    EXPECT_TRUE(absl::StrContains(st.message(), message)) << source << " -> " << st;
  }
}

TEST(TemplateTest, HostileNestingIsAnErrorNotACrash) {
  EXPECT_TRUE(absl::StrContains(ParseError("{{ " + std::string(100000, '(') + "1" + std::string(100000, ')') + " }}")
                                    .message(),
                                "nested too deeply"));
  EXPECT_TRUE(absl::StrContains(ParseError("{{ " + std::string(100000, '-') + "1 }}").message(), "nested too deeply"));
  EXPECT_TRUE(absl::StrContains(
      ParseError("{{ " + std::string(100000, '[') + std::string(100000, ']') + " }}").message(), "nested too deeply"));
  std::string nots = "{{ ";
  for (int i = 0; i < 100000; ++i) nots += "not ";
  EXPECT_TRUE(absl::StrContains(ParseError(nots + "x }}").message(), "nested too deeply"));
}

TEST(TemplateTest, RenderLimitsHold) {
  auto recursive = ChatTemplate::FromSource("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
  ASSERT_TRUE(recursive.ok());
  absl::StatusOr<std::string> r = (*recursive)->Render(Json::object());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
  auto big_range = ChatTemplate::FromSource("{% for i in range(1000000) %}{% endfor %}");
  ASSERT_TRUE(big_range.ok());
  EXPECT_TRUE(absl::StrContains((*big_range)->Render(Json::object()).status().message(), "range too big"));
  auto doubling = ChatTemplate::FromSource(
      "{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
      "{{ ns.s }}");
  ASSERT_TRUE(doubling.ok());
  EXPECT_FALSE((*doubling)->Render(Json::object()).ok());
  auto overflow = ChatTemplate::FromSource("{{ 9223372036854775807 + 1 }}");
  ASSERT_TRUE(overflow.ok());
  EXPECT_EQ((*overflow)->Render(Json::object()).status().code(), absl::StatusCode::kOutOfRange);
}

TEST(TemplateTest, ErrorsNameTheLineAndTheCause) {
  auto t = ChatTemplate::FromSource("line one\n{% if messages[0].role != 'user' %}\n{{ raise_exception('first "
                                    "message must be from the user') }}\n{% endif %}");
  ASSERT_TRUE(t.ok()) << t.status();
  absl::StatusOr<std::string> r = (*t)->Render(Json{{"messages", Json::array({{{"role", "system"}}})}});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "line 3: first message must be from the user");
  auto u = ChatTemplate::FromSource("\n\n{{ messages.nope.deeper }}");
  ASSERT_TRUE(u.ok());
  r = (*u)->Render(Json{{"messages", Json::object()}});
  EXPECT_EQ(r.status().message(), "line 3: 'dict object' has no attribute 'nope'") << r.status();
}

TEST(TemplateTest, RendersOnManyThreadsAtOnce) {
  auto t = ChatTemplate::FromSource(
      "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ m.content }}{% endfor %}"
      "{{ ns.n }}");
  ASSERT_TRUE(t.ok());
  std::vector<std::thread> threads;
  std::vector<int> ok(8, 0);
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      for (int k = 0; k < 200; ++k) {
        Json messages = Json::array();
        for (int j = 0; j <= i; ++j) messages.push_back({{"content", absl::StrCat(j)}});
        absl::StatusOr<std::string> r = (*t)->Render(Json{{"messages", messages}});
        std::string want;
        for (int j = 0; j <= i; ++j) want += absl::StrCat(j);
        ok[static_cast<size_t>(i)] += r.ok() && *r == want + absl::StrCat(i + 1);
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int i = 0; i < 8; ++i) EXPECT_EQ(ok[static_cast<size_t>(i)], 200) << "thread " << i;
}

class ChatTemplateLoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/chat_template_load_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void Write(const std::string& name, const std::string& text) {
    ASSERT_TRUE(WriteFileAtomically(dir_ + "/" + name, text).ok());
  }
  std::string dir_;
};

TEST_F(ChatTemplateLoadTest, FromTokenizerConfigWithItsSpecialTokens) {
  Write("tokenizer_config.json",
        Json{{"bos_token", {{"content", "<s>"}, {"lstrip", false}}},
             {"eos_token", "</s>"},
             {"chat_template", "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"}}
            .dump());
  auto t = ChatTemplate::Load(dir_);
  ASSERT_TRUE(t.ok()) << t.status();
  absl::StatusOr<std::string> r = (*t)->Render(Json{{"messages", Json::array({{{"content", "hi"}}})}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, "<s>hi</s>");
}

TEST_F(ChatTemplateLoadTest, NamedTemplatesTakeTheDefault) {
  Write("tokenizer_config.json",
        Json{{"chat_template", Json::array({{{"name", "tool_use"}, {"template", "tools"}},
                                            {{"name", "default"}, {"template", "plain"}}})}}
            .dump());
  auto t = ChatTemplate::Load(dir_);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*(*t)->Render(Json::object()), "plain");
}

TEST_F(ChatTemplateLoadTest, ChatTemplateJinjaComesFirst) {
  Write("tokenizer_config.json", Json{{"chat_template", "from config"}}.dump());
  Write("chat_template.jinja", "from file\n");
  auto t = ChatTemplate::Load(dir_);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*(*t)->Render(Json::object()), "from file");  // Jinja2 drops one trailing newline
}

TEST_F(ChatTemplateLoadTest, MissingAndBrokenTemplatesAreClearErrors) {
  EXPECT_EQ(ChatTemplate::Load(dir_).status().code(), absl::StatusCode::kNotFound);
  Write("tokenizer_config.json", Json{{"chat_template", "{% for %}"}}.dump());
  const absl::Status st = ChatTemplate::Load(dir_).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(st.message(), "tokenizer_config.json's chat_template: template syntax error, line 1"))
      << st;
  Write("tokenizer_config.json", "{not json");
  EXPECT_EQ(ChatTemplate::Load(dir_).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moemesh::jinja
