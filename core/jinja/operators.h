#ifndef MOEMESH_CORE_JINJA_OPERATORS_H_
#define MOEMESH_CORE_JINJA_OPERATORS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/jinja/value.h"

namespace moemesh::jinja {

// Python's operators over template values, with Jinja2's Undefined: it
// compares unequal to everything but itself, iterates as empty, has length
// 0, and makes arithmetic and ordering fail.

// The longest string an operator makes: a template's whole output is
// bounded the same way.
constexpr size_t kMaxStringBytes = size_t{64} << 20;

// "+", "-", "*", "/", "//", "%", "**", "~".
absl::StatusOr<Value> BinaryOp(absl::string_view op, const Value& a, const Value& b);
// "-" and "+".
absl::StatusOr<Value> UnaryOp(absl::string_view op, const Value& a);
// "==", "!=", "<", "<=", ">", ">=", "in", "notin".
absl::StatusOr<bool> Compare(absl::string_view op, const Value& a, const Value& b);
// Python's a < b, for sorting; strings, numbers, and lists of them.
absl::StatusOr<bool> Less(const Value& a, const Value& b);

// The items of a for loop: a list's or tuple's, a dict's keys, a string's
// characters; Undefined gives none.
absl::StatusOr<std::vector<Value>> Iterate(const Value& v);
// Python's len(): characters of a string, items of a list, keys of a dict.
absl::StatusOr<int64_t> Length(const Value& v);

// Code points of a UTF-8 string, each as its own string, and back.
std::vector<std::string> Characters(const std::string& s);
// Python's s[start:stop:step] and list[start:stop:step] (null: left out).
absl::StatusOr<Value> Slice(const Value& v, const Value& start, const Value& stop, const Value& step);

}  // namespace moemesh::jinja

#endif  // MOEMESH_CORE_JINJA_OPERATORS_H_
