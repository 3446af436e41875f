// Every chat template in tests/chat_templates (written in the styles of
// DeepSeek-V3, Qwen3, Mistral, Llama 3, ChatML, and one that uses the rest of
// the language) and the demo model's, over every conversation in cases.json, rendered by moemesh
// and by Python's Jinja2 set up as transformers sets it up
// (tools/chat/render_chat_template.py): the texts are equal byte for byte,
// and where Jinja2 fails, moemesh fails too (with raise_exception's message).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/common/file_util.h"
#include "core/jinja/chat_template.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace moemesh::jinja {
namespace {

using Json = nlohmann::ordered_json;

struct Case {
  std::string template_name;
  std::string case_name;
  std::string source;
  Json context;
};

// Runs Python's Jinja2 over every case at once.
Json RenderWithJinja2(const std::vector<Case>& cases) {
  Json in = Json::array();
  for (const Case& c : cases) in.push_back({{"template", c.source}, {"context", c.context}});
  const std::string dir = ::testing::TempDir();
  const std::string in_path = dir + "/jinja2_in.json", out_path = dir + "/jinja2_out.json";
  EXPECT_TRUE(WriteFileAtomically(in_path, in.dump()).ok());
  // Debian's python3 (python3-jinja2 is installed there), else the one on PATH.
  const char* python = std::filesystem::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
  const std::string cmd =
      absl::StrCat(python, " tools/chat/render_chat_template.py < ", in_path, " > ", out_path);
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd << " (needs python3-jinja2: tools/ci/install_deps.sh)";
  absl::StatusOr<std::string> out = ReadFile(out_path);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? Json::parse(*out) : Json::array();
}

TEST(Jinja2DifferentialTest, ChatTemplatesRenderAsJinja2Does) {
  absl::StatusOr<std::string> cases_text = ReadFile("tests/chat_templates/cases.json");
  ASSERT_TRUE(cases_text.ok()) << cases_text.status();
  const Json conversations = Json::parse(*cases_text);
  std::vector<Case> cases;
  std::vector<std::filesystem::path> templates;
  for (const auto& entry : std::filesystem::directory_iterator("tests/chat_templates")) {
    if (entry.path().extension() == ".jinja") templates.push_back(entry.path());
  }
  std::sort(templates.begin(), templates.end());
  templates.push_back("models/fortune-moe/chat_template.jinja");  // the demo model's own
  ASSERT_GE(templates.size(), 7u);
  for (const auto& path : templates) {
    absl::StatusOr<std::string> source = ReadFile(path.string());
    ASSERT_TRUE(source.ok()) << source.status();
    for (const Json& conversation : conversations) {
      cases.push_back({path.string(), conversation.value("name", "?"), *source, conversation});
    }
  }
  const Json want = RenderWithJinja2(cases);
  ASSERT_EQ(want.size(), cases.size());
  int rendered = 0, raised = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    SCOPED_TRACE(absl::StrCat(c.template_name, " over ", c.case_name));
    auto t = ChatTemplate::FromSource(c.source);
    ASSERT_TRUE(t.ok()) << t.status();
    absl::StatusOr<std::string> got = (*t)->Render(c.context);
    if (want[i]["ok"].get<bool>()) {
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(*got, want[i]["text"].get<std::string>());
      ++rendered;
    } else {
      ASSERT_FALSE(got.ok()) << "Jinja2 failed with " << want[i]["error"] << " but moemesh rendered:\n" << *got;
      const std::string error = want[i]["error"].get<std::string>();
      // raise_exception's message comes back bare; other errors' wording is
      // Jinja2's own.
      if (error.find(": ") == std::string::npos) {
        EXPECT_TRUE(absl::EndsWith(got.status().message(), error)) << got.status() << " vs " << error;
      }
      ++raised;
    }
  }
  std::printf("%d renders equal to Jinja2's, %d failures as Jinja2's, over %zu templates\n", rendered, raised,
              templates.size());
  EXPECT_GT(rendered, raised);
}

// The language's corners, one snippet each, over a small context.
TEST(Jinja2DifferentialTest, SnippetsRenderAsJinja2Does) {
  const Json context = Json::parse(R"({
    "s": "  Hello, World!  ", "u": "ÄRGER über Ωmega 🙂", "n": 7, "f": 2.5, "neg": -7, "t": true, "z": null,
    "xs": [3, 1, 2], "words": ["b", "A", "c", "a"], "d": {"b": 1, "a": [1, 2.0, "x"], "c": {"k": "v"}},
    "msgs": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": "yo", "extra": 1}, {"role": "user", "content": "bye"}],
    "big": 1e16, "small": 1e-05, "third": 0.1
  })");
  const std::vector<std::string> snippets = {
      // Printing: Python's str and repr.
      "{{ n }} {{ f }} {{ t }} {{ z }} {{ xs }} {{ d }} {{ big }} {{ small }} {{ third + 0.2 }} {{ 10 / 5 }}",
      "{{ (1, 2) }} {{ (1,) }} {{ ['it\\'s', \"q\\\"q\", 'a\\nb'] }} {{ -0.0 }} {{ 1e15 }} {{ 123456789.123 }}",
      "{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7.0 // 2 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 7 % -3 }} {{ 1 + 2 * 3 - 4 }}",
      "{{ 'a' ~ 1 ~ none ~ true }} {{ 'ab' * 3 }} {{ [1] + [2] }} {{ -3|abs }} {{ 1 if false }}|{{ 'x' if t else 'y' }}",
      // Whitespace control with trim_blocks and lstrip_blocks.
      "a\n  {% if t %}\n  b\n  {% endif %}\nc\n",
      "a  {%- if t -%}  b  {%- endif -%}  c",
      "x\n    {%+ if t %}y{% endif %}\n{{ 'v' }}\n  {# comment #}\nz",
      "{% for x in xs %}\n  {{ x }}\n{% endfor %}\n",
      "{% for x in xs %}{{ x }}{% if not loop.last %}, {% endif %}{% endfor %}{%+ if t +%}\nkept\n{% endif %}",
      "  {{ n }}  \n  {%- raw %}{{ not rendered }}{% endraw %}\n end",
      "{{- '  a  ' -}}   {{ 'b' }}\n\n",
      // Strings: methods, slicing, code points.
      "{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ s|trim }}|{{ 'xxhixx'.strip('x') }}|{{ s|trim('! ') }}",
      "{{ u|lower }}|{{ u|upper }}|{{ u|length }}|{{ u[::-1] }}|{{ u[2:7] }}|{{ u[-3:] }}|{{ u[0] }}",
      "{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'a b c'.split(' ', 1) }} {{ 'x'.split('y') }}",
      "{{ 'hello world'.title() }} {{ 'hello-world foo_bar'|title }} {{ 'hELLO'|capitalize }} {{ 'abc'.upper() }}",
      "{{ 'abcabc'.replace('b', 'X') }} {{ 'abcabc'|replace('b', 'X', 1) }} {{ 'abc'.find('c') }} {{ 'aaa'.count('a') }}",
      "{{ 'abc'.startswith('ab') }} {{ 'abc'.endswith(('x', 'c')) }} {{ '-'.join(['a', 'b']) }} {{ 'abc' in 'xabcx' }}",
      "{{ s[2:7] }}|{{ s[::2] }}|{{ xs[::-1] }}|{{ xs[1:] }}|{{ xs[-1] }}|{{ xs[10] }}|{{ 'abc'[5:] }}|",
      // Filters.
      "{{ words|sort }} {{ words|sort(case_sensitive=true) }} {{ words|sort(reverse=true) }} {{ words|unique|list }}",
      "{{ d|dictsort }} {{ d|items|list }} {{ d|length }} {{ xs|sum }} {{ xs|max }} {{ xs|min }} {{ xs|first }} {{ xs|last }}",
      "{{ msgs|selectattr('role', 'equalto', 'user')|map(attribute='content')|join(', ') }}",
      "{{ msgs|rejectattr('role', 'eq', 'user')|map(attribute='role')|list }} {{ msgs|selectattr('extra')|list|length }}",
      "{{ xs|select('odd')|list }} {{ xs|reject('even')|list }} {{ [1, 2, 3, 4, 5]|batch(2)|list }} {{ xs|map('string')|join }}",
      "{{ d|tojson }}|{{ d|tojson(indent=2) }}|{{ d|tojson(sort_keys=true) }}|{{ u|tojson }}|{{ 'a\"\\\\\\n\\t'|tojson }}",
      "{{ d|tojson(separators=(',', ':')) }} {{ [1.0, 2.5, none, true]|tojson }} {{ {}|tojson }} {{ []|tojson(indent=2) }}",
      "{{ missing|default('dflt') }} {{ ''|default('e', true) }} {{ z|default('none kept') }} {{ '3.9'|int }} {{ '12'|int + 1 }}",
      "{{ 'x'|float }} {{ '2.5'|float }} {{ 2.5|round }} {{ 3.5|round }} {{ 2.567|round(2) }} {{ 2.567|round(1, 'floor') }}",
      "{{ 'a\nb\n\nc'|indent(2) }}|{{ 'a\nb'|indent(2, true) }}|{{ none|trim }}|{{ 42|string }}|{{ xs|reverse|list }}",
      "{{ 'one two  three'|wordcount }} {{ '<a&b>'|e }} {{ xs|list|count }} {{ msgs|map(attribute='nope', default='-')|list }}",
      // Tests.
      "{{ n is odd }} {{ n is even }} {{ n is divisibleby 7 }} {{ t is number }} {{ t is integer }} {{ f is float }}",
      "{{ d is mapping }} {{ xs is sequence }} {{ s is iterable }} {{ z is none }} {{ missing is defined }} {{ z is not none }}",
      "{{ 'a' is in 'abc' }} {{ n is eq 7 }} {{ n is gt 3 }} {{ n is sameas 7 }} {{ t is true }} {{ s is string }} {{ s is lower }}",
      // Statements.
      "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set ns = namespace(x=0) %}{% for i in range(4) %}{% set ns.x = ns.x + i %}{% endfor %}{{ ns.x }}",
      "{% set x = 1 %}{% for i in xs %}{% set x = i %}{% endfor %}{{ x }}{% if t %}{% set y = 5 %}{% endif %}{{ y }}",
      "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %}",
      "{% for x in [] %}x{% else %}empty{% endfor %}{% for x in xs if x > 1 %}{{ loop.index }}/{{ loop.length }}{% endfor %}",
      "{% for x in xs %}{{ loop.index0 }}{{ loop.revindex }}{{ loop.first }}{{ loop.previtem }}{{ loop.nextitem }}{{ loop.cycle('a', 'b') }};{% endfor %}",
      "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %}{% for c in 'héllo' %}[{{ c }}]{% endfor %}",
      "{% macro m(a, b='B', c=none) %}<{{ a }}|{{ b }}|{{ c }}>{% endmacro %}{{ m(1) }}{{ m(1, 2) }}{{ m('x', c=3) }}",
      "{% macro w() %}[{{ caller() }}]{% endmacro %}{% call w() %}inside {{ n }}{% endcall %}",
      "{% set block %}some {{ n }} text{% endset %}{{ block|upper }}{% set b2 | trim %}  padded  {% endset %}[{{ b2 }}]",
      "{% filter upper %}shout {{ s|trim }}{% endfilter %}{% with a = 1, b = n %}{{ a + b }}{% endwith %}",
      "{% if n > 10 %}big{% elif n > 5 %}mid{% else %}small{% endif %} {{ 1 < n < 10 }} {{ n not in xs }} {{ not t or n }}",
      "{{ d.get('b') }} {{ d.get('q', 'dq') }} {{ d.get('q') }} {{ d.keys()|list }} {{ d.values()|list|length }} {{ d['c']['k'] }} {{ d.c.k }}",
      "{{ msgs[0].role }} {{ msgs[-1]['content'] }} {{ msgs|length }} {{ (msgs|last).content }} {{ messages is defined }}",
      "{% generation %}gen {{ n }}{% endgeneration %}{{ range(2, 10, 3)|list }} {{ dict(a=1, b=2) }} {{ [1, 2] == [1, 2] }}",
      // Errors.
      "{{ raise_exception('custom failure') }}",
      "{{ missing.attr }}",
      "{{ 1 + 'a' }}",
      "{{ xs|tojson(indent='x') }}",
  };
  std::vector<Case> cases;
  for (size_t i = 0; i < snippets.size(); ++i) cases.push_back({"snippet", absl::StrCat(i), snippets[i], context});
  const Json want = RenderWithJinja2(cases);
  ASSERT_EQ(want.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("snippet ", i, ": ", snippets[i]));
    auto t = ChatTemplate::FromSource(snippets[i]);
    ASSERT_TRUE(t.ok()) << t.status();
    absl::StatusOr<std::string> got = (*t)->Render(context);
    if (want[i]["ok"].get<bool>()) {
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(*got, want[i]["text"].get<std::string>());
    } else {
      EXPECT_FALSE(got.ok()) << "Jinja2 failed with " << want[i]["error"] << " but moemesh rendered:\n" << *got;
    }
  }
}

}  // namespace
}  // namespace moemesh::jinja
