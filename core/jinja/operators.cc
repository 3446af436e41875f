#include "core/jinja/operators.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/tokenizer/utf8.h"

namespace moemesh::jinja {
namespace {

absl::Status TypeError(absl::string_view op, const Value& a, const Value& b) {
  if (a.is_undefined()) return absl::InvalidArgumentError(a.UndefinedMessage());
  if (b.is_undefined()) return absl::InvalidArgumentError(b.UndefinedMessage());
  return absl::InvalidArgumentError(absl::StrCat("unsupported operand type(s) for ", op, ": '", a.TypeName(),
                                                 "' and '", b.TypeName(), "'"));
}

bool IsInt(const Value& v) { return v.is_int() || v.is_bool(); }

absl::StatusOr<Value> Repeat(const Value& seq, int64_t n) {
  if (n > 0 && seq.is_string() && seq.string().size() * static_cast<uint64_t>(n) > kMaxStringBytes) {
    return absl::ResourceExhaustedError("string longer than 64 MiB");
  }
  if (seq.is_string()) {
    std::string out;
    for (int64_t i = 0; i < n; ++i) out += seq.string();
    return Value(std::move(out));
  }
  if (n > 0 && seq.array().size() * static_cast<uint64_t>(n) > (uint64_t{1} << 24)) {
    return absl::ResourceExhaustedError("list longer than 16M items");
  }
  Array out;
  for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq.array().begin(), seq.array().end());
  return Value(std::move(out), seq.is_tuple());
}

absl::StatusOr<Value> IntOp(absl::string_view op, int64_t a, int64_t b) {
  int64_t r = 0;
  if (op == "+") {
    if (__builtin_add_overflow(a, b, &r)) return absl::OutOfRangeError("integer overflow");
  } else if (op == "-") {
    if (__builtin_sub_overflow(a, b, &r)) return absl::OutOfRangeError("integer overflow");
  } else if (op == "*") {
    if (__builtin_mul_overflow(a, b, &r)) return absl::OutOfRangeError("integer overflow");
  } else if (op == "/") {
    if (b == 0) return absl::InvalidArgumentError("division by zero");
    return Value(static_cast<double>(a) / static_cast<double>(b));
  } else if (op == "//" || op == "%") {
    if (b == 0) return absl::InvalidArgumentError("integer division or modulo by zero");
    if (a == std::numeric_limits<int64_t>::min() && b == -1) return absl::OutOfRangeError("integer overflow");
    int64_t q = a / b, m = a % b;
    if (m != 0 && ((m < 0) != (b < 0))) --q, m += b;  // Python floors
    r = op == "//" ? q : m;
  } else if (op == "**") {
    if (b < 0) return Value(std::pow(static_cast<double>(a), static_cast<double>(b)));
    r = 1;
    for (int64_t i = 0; i < b; ++i) {
      if (__builtin_mul_overflow(r, a, &r)) return absl::OutOfRangeError("integer overflow");
      if (r == 0 || r == 1) break;
    }
  }
  return Value(r);
}

absl::StatusOr<Value> FloatOp(absl::string_view op, double a, double b) {
  if (op == "+") return Value(a + b);
  if (op == "-") return Value(a - b);
  if (op == "*") return Value(a * b);
  if (op == "**") return Value(std::pow(a, b));
  if (b == 0) return absl::InvalidArgumentError("float division by zero");
  if (op == "/") return Value(a / b);
  double m = std::fmod(a, b);
  if (m != 0 && ((m < 0) != (b < 0))) m += b;
  if (op == "%") return Value(m);
  return Value(std::floor(a / b));
}

}  // namespace

absl::StatusOr<Value> BinaryOp(absl::string_view op, const Value& a, const Value& b) {
  if (op == "~" || (op == "+" && a.is_string() && b.is_string())) {
    std::string s = a.Str(), t = b.Str();
    if (s.size() + t.size() > kMaxStringBytes) return absl::ResourceExhaustedError("string longer than 64 MiB");
    return Value(s + t);
  }
  if (a.is_number() && b.is_number()) {
    if (IsInt(a) && IsInt(b)) return IntOp(op, a.integer(), b.integer());
    return FloatOp(op, a.number(), b.number());
  }
  if (op == "+") {
    if (a.is_array() && b.is_array() && a.is_tuple() == b.is_tuple()) {
      if (a.array().size() + b.array().size() > (size_t{1} << 24)) {
        return absl::ResourceExhaustedError("list longer than 16M items");
      }
      Array out = a.array();
      out.insert(out.end(), b.array().begin(), b.array().end());
      return Value(std::move(out), a.is_tuple());
    }
  }
  if (op == "*") {
    if ((a.is_string() || a.is_array()) && IsInt(b)) return Repeat(a, b.integer());
    if (IsInt(a) && (b.is_string() || b.is_array())) return Repeat(b, a.integer());
  }
  if (op == "%" && a.is_string()) {
    return absl::UnimplementedError("printf-style string formatting ('...' % x) is not supported; use ~ or format");
  }
  return TypeError(op, a, b);
}

absl::StatusOr<Value> UnaryOp(absl::string_view op, const Value& a) {
  if (!a.is_number()) {
    if (a.is_undefined()) return absl::InvalidArgumentError(a.UndefinedMessage());
    return absl::InvalidArgumentError(absl::StrCat("bad operand type for unary ", op, ": '", a.TypeName(), "'"));
  }
  if (op == "+") return a.is_float() ? a : Value(a.integer());
  if (a.is_float()) return Value(-a.number());
  if (a.integer() == std::numeric_limits<int64_t>::min()) return absl::OutOfRangeError("integer overflow");
  return Value(-a.integer());
}

absl::StatusOr<bool> Less(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    return IsInt(a) && IsInt(b) ? a.integer() < b.integer() : a.number() < b.number();
  }
  if (a.is_string() && b.is_string()) return a.string() < b.string();
  if (a.is_array() && b.is_array()) {
    const size_t n = std::min(a.array().size(), b.array().size());
    for (size_t i = 0; i < n; ++i) {
      if (a.array()[i].Equals(b.array()[i])) continue;
      return Less(a.array()[i], b.array()[i]);
    }
    return a.array().size() < b.array().size();
  }
  if (a.is_undefined()) return absl::InvalidArgumentError(a.UndefinedMessage());
  if (b.is_undefined()) return absl::InvalidArgumentError(b.UndefinedMessage());
  return absl::InvalidArgumentError(absl::StrCat("'<' not supported between instances of '", a.TypeName(), "' and '",
                                                 b.TypeName(), "'"));
}

absl::StatusOr<bool> Compare(absl::string_view op, const Value& a, const Value& b) {
  if (op == "==") return a.Equals(b);
  if (op == "!=") return !a.Equals(b);
  if (op == "<") return Less(a, b);
  if (op == ">") return Less(b, a);
  if (op == "<=" || op == ">=") {
    if (a.Equals(b) && (a.is_number() || a.is_string() || a.is_array())) return true;
    return op == "<=" ? Less(a, b) : Less(b, a);
  }
  const bool negate = op == "notin";
  bool found = false;
  if (b.is_string()) {
    if (!a.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat("'in <string>' requires string as left operand, not ",
                                                     a.TypeName()));
    }
    found = absl::StrContains(b.string(), a.string());
  } else if (b.is_array()) {
    found = std::any_of(b.array().begin(), b.array().end(), [&](const Value& e) { return e.Equals(a); });
  } else if (b.is_object() && !b.is_namespace()) {
    found = a.is_string() && b.object().Find(a.string()) != nullptr;
  } else if (!b.is_undefined()) {
    return absl::InvalidArgumentError(absl::StrCat("argument of type '", b.TypeName(), "' is not iterable"));
  }
  return found != negate;
}

std::vector<std::string> Characters(const std::string& s) {
  std::vector<std::string> out;
  size_t pos = 0;
  const size_t valid = FirstInvalidUtf8(s);
  while (pos < s.size()) {
    const size_t start = pos;
    if (pos < valid) NextCodePoint(s, &pos);
    else ++pos;  // a stray byte counts as one character
    out.push_back(s.substr(start, pos - start));
  }
  return out;
}

absl::StatusOr<std::vector<Value>> Iterate(const Value& v) {
  std::vector<Value> out;
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return out;
    case Value::Kind::kArray:
      return v.array();
    case Value::Kind::kString:
      for (std::string& c : Characters(v.string())) out.emplace_back(std::move(c));
      return out;
    case Value::Kind::kObject:
      if (v.is_namespace()) break;
      for (const auto& [k, e] : v.object().items()) out.emplace_back(k);
      return out;
    default:
      break;
  }
  return absl::InvalidArgumentError(absl::StrCat("'", v.TypeName(), "' object is not iterable"));
}

absl::StatusOr<int64_t> Length(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return 0;
    case Value::Kind::kString:
      return static_cast<int64_t>(Characters(v.string()).size());
    case Value::Kind::kArray:
      return static_cast<int64_t>(v.array().size());
    case Value::Kind::kObject:
      if (v.is_namespace()) break;
      return static_cast<int64_t>(v.object().size());
    default:
      break;
  }
  return absl::InvalidArgumentError(absl::StrCat("object of type '", v.TypeName(), "' has no len()"));
}

absl::StatusOr<Value> Slice(const Value& v, const Value& start_v, const Value& stop_v, const Value& step_v) {
  auto bound = [](const Value& b, const char* what) -> absl::Status {
    if (b.is_undefined() || b.is_none() || IsInt(b)) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("slice ", what, " must be an integer or None, not ", b.TypeName()));
  };
  if (absl::Status st = bound(start_v, "start"); !st.ok()) return st;
  if (absl::Status st = bound(stop_v, "stop"); !st.ok()) return st;
  if (absl::Status st = bound(step_v, "step"); !st.ok()) return st;
  auto given = [](const Value& b) { return !b.is_undefined() && !b.is_none(); };
  const int64_t step = given(step_v) ? step_v.integer() : 1;
  if (step == 0) return absl::InvalidArgumentError("slice step cannot be zero");
  std::vector<Value> items;
  std::vector<std::string> chars;
  int64_t n = 0;
  if (v.is_string()) {
    chars = Characters(v.string());
    n = static_cast<int64_t>(chars.size());
  } else if (v.is_array()) {
    n = static_cast<int64_t>(v.array().size());
  } else {
    if (v.is_undefined()) return absl::InvalidArgumentError(v.UndefinedMessage());
    return absl::InvalidArgumentError(absl::StrCat("'", v.TypeName(), "' object is not subscriptable"));
  }
  // Python's PySlice_AdjustIndices.
  auto adjust = [&](const Value& b, int64_t dflt) {
    if (!given(b)) return dflt;
    int64_t i = b.integer();
    if (i < 0) {
      i += n;
      if (i < 0) i = step < 0 ? -1 : 0;
    } else if (i >= n) {
      i = step < 0 ? n - 1 : n;
    }
    return i;
  };
  const int64_t start = adjust(start_v, step < 0 ? n - 1 : 0), stop = adjust(stop_v, step < 0 ? -1 : n);
  std::string s;
  Array a;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    if (v.is_string()) s += chars[static_cast<size_t>(i)];
    else a.push_back(v.array()[static_cast<size_t>(i)]);
  }
  if (v.is_string()) return Value(std::move(s));
  return Value(std::move(a), v.is_tuple());
}

}  // namespace moemesh::jinja
