#ifndef MOEMESH_CORE_JINJA_BUILTINS_H_
#define MOEMESH_CORE_JINJA_BUILTINS_H_

#include <initializer_list>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/jinja/value.h"

namespace moemesh::jinja {

// Jinja2's built-in filters and tests (those templates use; transformers'
// `tojson`), Python's string and dict methods, and the global functions
// `range`, `dict` and `namespace`.
using FilterFn = absl::StatusOr<Value> (*)(const Value& operand, CallArgs& args);
using TestFn = absl::StatusOr<bool> (*)(const Value& operand, CallArgs& args);

// Null when there is no such filter or test: the parser reports it.
FilterFn FindFilter(absl::string_view name);
TestFn FindTest(absl::string_view name);

// `obj.name`: a dict's methods before its items, as Python's getattr.
absl::StatusOr<Value> GetAttr(const Value& obj, const std::string& name);
// `obj[key]`: a dict's items before its methods; negative list indices.
absl::StatusOr<Value> GetItem(const Value& obj, const Value& key);

// Adds `range`, `dict` and `namespace`.
void AddGlobals(Object* globals);

// Binds a call's arguments to parameter names, positional first, then by
// keyword: one value per name, Undefined where not given. Unknown keywords
// and surplus positional arguments are errors naming `function`.
absl::StatusOr<std::vector<Value>> BindArgs(absl::string_view function, const CallArgs& args,
                                            std::initializer_list<const char*> names);

}  // namespace moemesh::jinja

#endif  // MOEMESH_CORE_JINJA_BUILTINS_H_
