#ifndef MOEMESH_CORE_JINJA_TEMPLATE_H_
#define MOEMESH_CORE_JINJA_TEMPLATE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/jinja/lexer.h"
#include "core/jinja/value.h"

namespace moemesh::jinja {

struct Stmt;

// A Jinja2 template: the language Hugging Face chat templates are written
// in, run with Python's semantics so that the text equals what Jinja2
// renders (docs/ARCHITECTURE.md, "Chat templates", lists what is covered).
// Parse once; Render is const and may run on many threads at once.
class Template {
 public:
  static absl::StatusOr<std::unique_ptr<Template>> Parse(absl::string_view source, const LexerOptions& options);
  ~Template();

  // Renders with `context`'s variables over the globals (`range`, `dict`,
  // `namespace`). Errors: a template's own failures (raise_exception, a
  // type error, an undefined value used) as INVALID_ARGUMENT with the line.
  absl::StatusOr<std::string> Render(const Object& context) const;

 private:
  explicit Template(std::vector<std::unique_ptr<Stmt>> body);
  std::vector<std::unique_ptr<Stmt>> body_;
};

}  // namespace moemesh::jinja

#endif  // MOEMESH_CORE_JINJA_TEMPLATE_H_
