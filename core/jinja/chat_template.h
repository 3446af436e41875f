#ifndef MOEMESH_CORE_JINJA_CHAT_TEMPLATE_H_
#define MOEMESH_CORE_JINJA_CHAT_TEMPLATE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace moemesh::jinja {

class Template;

// A model's chat template, rendered as transformers' apply_chat_template
// renders it: Jinja2 with trim_blocks and lstrip_blocks, loop controls,
// `{% generation %}`, the globals raise_exception(message) and
// strftime_now(format), `tojson` as json.dumps(ensure_ascii=False), and the
// tokenizer's special tokens (bos_token, eos_token, ...) as variables.
class ChatTemplate {
 public:
  // The template of the model in `model_dir`: `template_file` when given,
  // else chat_template.jinja, else tokenizer_config.json's "chat_template"
  // (a string, or a list of named templates of which "default" is taken),
  // with the special tokens of tokenizer_config.json. NOT_FOUND when there
  // is none; INVALID_ARGUMENT, naming the line, when it does not parse, or
  // when it fails on a one-message conversation (other than by its own
  // raise_exception): a template moemesh cannot run is refused at start-up.
  static absl::StatusOr<std::unique_ptr<ChatTemplate>> Load(const std::string& model_dir,
                                                            const std::string& template_file = "");
  // From source text; `special_tokens` (an object of strings) become variables.
  static absl::StatusOr<std::unique_ptr<ChatTemplate>> FromSource(
      absl::string_view source, nlohmann::ordered_json special_tokens = nlohmann::ordered_json::object());
  ~ChatTemplate();

  // Renders with `context`'s keys (messages, tools, add_generation_prompt,
  // and any others: the request's chat_template_kwargs) as variables over
  // the special tokens. A template's raise_exception, or any other failure,
  // is INVALID_ARGUMENT with its message (IsRaisedByTemplate tells which).
  absl::StatusOr<std::string> Render(const nlohmann::ordered_json& context) const;

  const std::string& source() const { return source_; }

 private:
  ChatTemplate() = default;
  std::unique_ptr<Template> template_;
  std::string source_;
  nlohmann::ordered_json special_tokens_;
};

// Whether `status` came from the template's own raise_exception(message).
bool IsRaisedByTemplate(const absl::Status& status);

}  // namespace moemesh::jinja

#endif  // MOEMESH_CORE_JINJA_CHAT_TEMPLATE_H_
