#include "core/jinja/chat_template.h"

#include <ctime>
#include <filesystem>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "core/common/file_util.h"
#include "core/common/status_macros.h"
#include "core/jinja/template.h"
#include "core/jinja/value.h"

namespace moemesh::jinja {
namespace {

// Marks the statuses of the template's raise_exception.
constexpr char kRaisedPayload[] = "moemesh.dev/jinja/raise_exception";

// transformers' environment: ImmutableSandboxedEnvironment(trim_blocks=True,
// lstrip_blocks=True); Jinja2 drops one trailing newline of the source.
LexerOptions ChatLexerOptions() {
  LexerOptions o;
  o.trim_blocks = true;
  o.lstrip_blocks = true;
  return o;
}

// tokenizer_config.json keeps a special token as a string or as an
// AddedToken object {"content": ...}.
void AddSpecialToken(const nlohmann::ordered_json& config, const char* name, nlohmann::ordered_json* out) {
  auto it = config.find(name);
  if (it == config.end()) return;
  if (it->is_string()) (*out)[name] = *it;
  else if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) (*out)[name] = (*it)["content"];
}

}  // namespace

ChatTemplate::~ChatTemplate() = default;

absl::StatusOr<std::unique_ptr<ChatTemplate>> ChatTemplate::FromSource(absl::string_view source,
                                                                       nlohmann::ordered_json special_tokens) {
  auto t = std::unique_ptr<ChatTemplate>(new ChatTemplate());
  MM_ASSIGN_OR_RETURN(t->template_, Template::Parse(source, ChatLexerOptions()));
  t->source_ = std::string(source);
  t->special_tokens_ = std::move(special_tokens);
  return t;
}

bool IsRaisedByTemplate(const absl::Status& status) {
  return status.GetPayload(kRaisedPayload).has_value();
}

absl::StatusOr<std::unique_ptr<ChatTemplate>> ChatTemplate::Load(const std::string& model_dir,
                                                                  const std::string& template_file) {
  const std::filesystem::path dir(model_dir);
  nlohmann::ordered_json config = nlohmann::ordered_json::object();
  if (std::filesystem::exists(dir / "tokenizer_config.json")) {
    MM_ASSIGN_OR_RETURN(std::string text, ReadFile((dir / "tokenizer_config.json").string()));
    config = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (config.is_discarded() || !config.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(model_dir, "/tokenizer_config.json is not a JSON object"));
    }
  }
  nlohmann::ordered_json special = nlohmann::ordered_json::object();
  for (const char* name : {"bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
                           "mask_token"}) {
    AddSpecialToken(config, name, &special);
  }
  std::string source, where;
  if (!template_file.empty()) {
    where = template_file;
    MM_ASSIGN_OR_RETURN(source, ReadFile(template_file));
  } else if (std::filesystem::exists(dir / "chat_template.jinja")) {
    where = "chat_template.jinja";
    MM_ASSIGN_OR_RETURN(source, ReadFile((dir / where).string()));
  } else if (auto it = config.find("chat_template"); it != config.end() && !it->is_null()) {
    where = "tokenizer_config.json's chat_template";
    if (it->is_string()) {
      source = it->get<std::string>();
    } else if (it->is_array()) {
      for (const auto& named : *it) {
        if (named.is_object() && named.contains("name") && named["name"] == "default" && named.contains("template") &&
            named["template"].is_string()) {
          source = named["template"].get<std::string>();
        }
      }
      if (source.empty()) return absl::InvalidArgumentError(absl::StrCat(model_dir, ": ", where, " has no \"default\""));
    } else {
      return absl::InvalidArgumentError(absl::StrCat(model_dir, ": ", where, " must be a string or a list"));
    }
  } else {
    return absl::NotFoundError(absl::StrCat(model_dir, " has no chat template (chat_template.jinja or "
                                                       "tokenizer_config.json's chat_template)"));
  }
  absl::StatusOr<std::unique_ptr<ChatTemplate>> t = FromSource(source, std::move(special));
  if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat(model_dir, ": ", where, ": ", t.status().message()));
  const nlohmann::ordered_json probe = {
      {"messages", nlohmann::ordered_json::array({{{"role", "user"}, {"content", "Hello"}}})},
      {"tools", nullptr},
      {"documents", nullptr},
      {"add_generation_prompt", true}};
  if (absl::StatusOr<std::string> r = (*t)->Render(probe); !r.ok() && !IsRaisedByTemplate(r.status())) {
    return absl::InvalidArgumentError(absl::StrCat(model_dir, ": ", where,
                                                   " fails on a one-message conversation: ", r.status().message()));
  }
  return t;
}

absl::StatusOr<std::string> ChatTemplate::Render(const nlohmann::ordered_json& context) const {
  if (!context.is_object()) return absl::InvalidArgumentError("chat template context must be an object");
  Object vars;
  vars.Set("raise_exception", Value::Callable("raise_exception", [](CallArgs& args) -> absl::StatusOr<Value> {
    absl::Status raised =
        absl::InvalidArgumentError(args.positional.empty() ? "raise_exception" : args.positional[0].Str());
    raised.SetPayload(kRaisedPayload, absl::Cord("1"));
    return raised;
  }));
  vars.Set("strftime_now", Value::Callable("strftime_now", [](CallArgs& args) -> absl::StatusOr<Value> {
    if (args.positional.size() != 1 || !args.positional[0].is_string()) {
      return absl::InvalidArgumentError("strftime_now takes one format string");
    }
    const std::time_t now = std::time(nullptr);
    std::tm local;
    localtime_r(&now, &local);
    char buf[256];
    const size_t n = std::strftime(buf, sizeof buf, args.positional[0].string().c_str(), &local);
    return Value(std::string(buf, n));
  }));
  for (const auto& [k, v] : special_tokens_.items()) vars.Set(k, Value::FromJson(v));
  for (const auto& [k, v] : context.items()) vars.Set(k, Value::FromJson(v));
  return template_->Render(vars);
}

}  // namespace moemesh::jinja
