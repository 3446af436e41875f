#ifndef MOEMESH_CORE_JINJA_PARSER_H_
#define MOEMESH_CORE_JINJA_PARSER_H_

#include <vector>

#include "absl/status/statusor.h"
#include "core/jinja/ast.h"
#include "core/jinja/lexer.h"

namespace moemesh::jinja {

// Builds a template's statements from its tokens with Jinja2's grammar and
// operator precedence. Unknown tags, filters and tests, and constructs
// moemesh does not run (`include`, `extends`, `import`, `block`), are errors
// here, so that a template is refused when it is loaded, not while it serves.
absl::StatusOr<Body> Parse(const std::vector<Token>& tokens);

}  // namespace moemesh::jinja

#endif  // MOEMESH_CORE_JINJA_PARSER_H_
