#ifndef MOEMESH_CORE_JINJA_VALUE_H_
#define MOEMESH_CORE_JINJA_VALUE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json_fwd.hpp"

namespace moemesh::jinja {

class Value;
using Array = std::vector<Value>;

// A Python dict with string keys: insertion order kept, as templates see
// it when they iterate or serialize a request's JSON.
class Object {
 public:
  const Value* Find(absl::string_view key) const;
  void Set(std::string key, Value value);
  const std::vector<std::pair<std::string, Value>>& items() const { return items_; }
  size_t size() const { return items_.size(); }

 private:
  std::vector<std::pair<std::string, Value>> items_;
};

// Arguments of a call: positional, then keyword.
struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};
using Function = std::function<absl::StatusOr<Value>(CallArgs&)>;

// A template value, with Python's semantics (templates are Python code in
// spirit: Jinja2 runs them on Python objects). Arrays, objects and
// functions are shared, as Python's references are; a template cannot
// mutate arrays or objects (transformers renders in an immutable sandbox),
// except a namespace's attributes.
class Value {
 public:
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kArray, kObject, kFunction };

  Value() = default;  // undefined
  // Undefined, naming what was looked up, for messages.
  static Value Undefined(std::string hint);
  static Value None();
  Value(bool b) : kind_(Kind::kBool), int_(b) {}
  Value(int i) : kind_(Kind::kInt), int_(i) {}
  Value(int64_t i) : kind_(Kind::kInt), int_(i) {}
  Value(double f) : kind_(Kind::kFloat), float_(f) {}
  Value(std::string s) : kind_(Kind::kString), string_(std::make_shared<std::string>(std::move(s))) {}
  Value(const char* s) : Value(std::string(s)) {}
  Value(Array a, bool tuple = false);
  Value(Object o, bool is_namespace = false);
  static Value Callable(std::string name, Function f);
  // From JSON, keys in the order they appear in `j`.
  static Value FromJson(const nlohmann::ordered_json& j);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_int() const { return kind_ == Kind::kInt; }
  bool is_float() const { return kind_ == Kind::kFloat; }
  bool is_number() const { return is_int() || is_float() || is_bool(); }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_array() const { return kind_ == Kind::kArray; }
  bool is_tuple() const { return is_array() && tuple_; }
  bool is_object() const { return kind_ == Kind::kObject; }
  bool is_namespace() const { return is_object() && namespace_; }
  bool is_function() const { return kind_ == Kind::kFunction; }

  bool boolean() const { return int_ != 0; }
  int64_t integer() const { return int_; }  // bools too: True is 1
  double number() const { return is_float() ? float_ : static_cast<double>(int_); }
  const std::string& string() const { return *string_; }
  const Array& array() const { return *array_; }
  const Object& object() const { return *object_; }
  Object* mutable_object() const { return object_.get(); }  // namespaces only
  const std::string& function_name() const { return *string_; }
  // "'x' is undefined" or "'dict object' has no attribute 'x'".
  std::string UndefinedMessage() const;
  absl::StatusOr<Value> Call(CallArgs& args) const { return (*function_)(args); }

  // Python's bool(x).
  bool Truthy() const;
  // Python's str(x) (undefined prints as nothing, as Jinja2's Undefined).
  std::string Str() const;
  // Python's repr(x).
  std::string Repr() const;
  // Python's x == y (1 == 1.0 == True; lists and dicts by content).
  bool Equals(const Value& other) const;
  // Python's type name, for messages: 'str', 'list', 'dict', ...
  std::string TypeName() const;

 private:
  Kind kind_ = Kind::kUndefined;
  bool tuple_ = false;
  bool namespace_ = false;
  int64_t int_ = 0;
  double float_ = 0;
  std::shared_ptr<const std::string> string_;
  std::shared_ptr<const Array> array_;
  std::shared_ptr<Object> object_;
  std::shared_ptr<const Function> function_;
};

// Python's repr(float): the shortest digits that read back exactly.
std::string FloatRepr(double f);

// Python's json.dumps(v, ensure_ascii=False, indent=..., separators=...,
// sort_keys=...), as transformers' `tojson` filter calls it: `pretty` with
// `indent` per level (indent=None is not pretty); empty separators take
// json.dumps' defaults.
struct JsonOptions {
  bool pretty = false;
  std::string indent;
  std::string item_separator;
  std::string key_separator;
  bool sort_keys = false;
};
absl::StatusOr<std::string> ToJson(const Value& v, const JsonOptions& options);

}  // namespace moemesh::jinja

#endif  // MOEMESH_CORE_JINJA_VALUE_H_
