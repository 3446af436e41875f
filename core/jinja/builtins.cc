#include "core/jinja/builtins.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <utility>

#include <utf8proc.h>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "core/common/status_macros.h"
#include "core/jinja/operators.h"
#include "core/tokenizer/utf8.h"

// Binds a call's arguments to `auto name`: MM_JINJA_BIND(a, "f", args, {"x", "y"}).
#define MM_JINJA_BIND(name, where, args, ...) MM_ASSIGN_OR_RETURN(auto name, BindArgs(where, args, __VA_ARGS__))

namespace moemesh::jinja {
namespace {

absl::Status Error(absl::string_view where, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", message));
}

bool Given(const Value& v) { return !v.is_undefined(); }

// Python's str.isspace() for one code point.
bool IsPySpace(char32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

char32_t CodePoint(const std::string& ch) {
  size_t pos = 0;
  return FirstInvalidUtf8(ch) == ch.size() ? NextCodePoint(ch, &pos) : 0xFFFD;
}

std::string MapCase(const std::string& s, bool upper) {
  std::string out;
  for (const std::string& ch : Characters(s)) {
    if (ch.size() == 1 && static_cast<unsigned char>(ch[0]) < 0x80) {
      out += static_cast<char>(upper ? std::toupper(ch[0]) : std::tolower(ch[0]));
    } else if (FirstInvalidUtf8(ch) != ch.size()) {
      out += ch;
    } else {
      const char32_t c = CodePoint(ch);
      AppendUtf8(static_cast<char32_t>(upper ? utf8proc_toupper(static_cast<utf8proc_int32_t>(c))
                                             : utf8proc_tolower(static_cast<utf8proc_int32_t>(c))),
                 &out);
    }
  }
  return out;
}

bool IsCased(const std::string& ch, bool* upper) {
  const std::string u = MapCase(ch, true), l = MapCase(ch, false);
  if (u == l) return false;
  *upper = ch == u;
  return true;
}

// Python's str.strip family: `chars` Undefined or None strips whitespace.
absl::StatusOr<std::string> Strip(const std::string& s, const Value& chars, bool left, bool right) {
  if (Given(chars) && !chars.is_none() && !chars.is_string()) {
    return absl::InvalidArgumentError("strip arg must be None or str");
  }
  const std::vector<std::string> c = Characters(s);
  std::vector<std::string> set;
  if (chars.is_string()) set = Characters(chars.string());
  auto strip = [&](const std::string& ch) {
    return chars.is_string() ? std::find(set.begin(), set.end(), ch) != set.end() : IsPySpace(CodePoint(ch));
  };
  size_t begin = 0, end = c.size();
  while (left && begin < end && strip(c[begin])) ++begin;
  while (right && end > begin && strip(c[end - 1])) --end;
  std::string out;
  for (size_t i = begin; i < end; ++i) out += c[i];
  return out;
}

// Python's str.split(sep=None, maxsplit=-1).
absl::StatusOr<Value> Split(const std::string& s, const Value& sep, const Value& maxsplit_v) {
  const int64_t maxsplit = maxsplit_v.is_int() ? maxsplit_v.integer() : -1;
  Array out;
  if (!Given(sep) || sep.is_none()) {
    const std::vector<std::string> c = Characters(s);
    size_t i = 0;
    int64_t splits = 0;
    while (true) {
      while (i < c.size() && IsPySpace(CodePoint(c[i]))) ++i;
      if (i == c.size()) break;
      std::string word;
      if (maxsplit >= 0 && splits == maxsplit) {
        size_t end = c.size();
        while (end > i && IsPySpace(CodePoint(c[end - 1]))) --end;
        for (; i < end; ++i) word += c[i];
        out.emplace_back(std::move(word));
        break;
      }
      while (i < c.size() && !IsPySpace(CodePoint(c[i]))) word += c[i++];
      out.emplace_back(std::move(word));
      ++splits;
    }
    return Value(std::move(out));
  }
  if (!sep.is_string()) return absl::InvalidArgumentError("split: must be str or None");
  if (sep.string().empty()) return absl::InvalidArgumentError("split: empty separator");
  size_t start = 0;
  int64_t splits = 0;
  while (maxsplit < 0 || splits < maxsplit) {
    const size_t at = s.find(sep.string(), start);
    if (at == std::string::npos) break;
    out.emplace_back(s.substr(start, at - start));
    start = at + sep.string().size();
    ++splits;
  }
  out.emplace_back(s.substr(start));
  return Value(std::move(out));
}

absl::StatusOr<Value> Replace(const std::string& s, const Value& old_v, const Value& new_v, const Value& count_v) {
  if (!old_v.is_string() || !new_v.is_string()) return absl::InvalidArgumentError("replace: arguments must be str");
  const int64_t count = count_v.is_int() ? count_v.integer() : -1;
  const std::string& from = old_v.string();
  const std::string& to = new_v.string();
  std::string out;
  if (from.empty()) {
    // Python inserts `to` around every character.
    int64_t n = 0;
    for (const std::string& ch : Characters(s)) {
      if (count < 0 || n++ < count) out += to;
      out += ch;
    }
    if (count < 0 || n < count) out += to;
    return Value(std::move(out));
  }
  size_t start = 0;
  for (int64_t n = 0; count < 0 || n < count; ++n) {
    const size_t at = s.find(from, start);
    if (at == std::string::npos) break;
    out += s.substr(start, at - start) + to;
    start = at + from.size();
    if (out.size() > kMaxStringBytes) return absl::ResourceExhaustedError("string longer than 64 MiB");
  }
  out += s.substr(start);
  return Value(std::move(out));
}

absl::StatusOr<bool> AffixTest(const std::string& s, const Value& affix, bool prefix) {
  std::vector<Value> options;
  if (affix.is_string()) options.push_back(affix);
  else if (affix.is_array()) options = affix.array();
  else return absl::InvalidArgumentError("startswith/endswith: argument must be str or a tuple of str");
  for (const Value& a : options) {
    if (!a.is_string()) return absl::InvalidArgumentError("startswith/endswith: argument must be str");
    if (prefix ? absl::StartsWith(s, a.string()) : absl::EndsWith(s, a.string())) return true;
  }
  return false;
}

// Python's str.title(): a letter after a cased letter is lowered, any other
// letter raised.
std::string PyTitle(const std::string& s) {
  std::string out;
  bool previous_cased = false;
  for (const std::string& ch : Characters(s)) {
    bool upper = false;
    const bool cased = IsCased(ch, &upper);
    out += cased ? MapCase(ch, !previous_cased) : ch;
    previous_cased = cased;
  }
  return out;
}

std::string Capitalize(const std::string& s) {
  const std::vector<std::string> c = Characters(s);
  std::string out;
  for (size_t i = 0; i < c.size(); ++i) out += MapCase(c[i], i == 0);
  return out;
}

absl::StatusOr<Value> StringMethod(const std::string& s, const std::string& name, CallArgs& args) {
  const std::string where = "str." + name;
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    MM_JINJA_BIND(a, where, args, {"chars"});
    auto r = Strip(s, a[0], name != "rstrip", name != "lstrip");
    if (!r.ok()) return r.status();
    return Value(*std::move(r));
  }
  if (name == "split") {
    MM_JINJA_BIND(a, where, args, {"sep", "maxsplit"});
    return Split(s, a[0], a[1]);
  }
  if (name == "startswith" || name == "endswith") {
    MM_JINJA_BIND(a, where, args, {"prefix"});
    auto r = AffixTest(s, a[0], name == "startswith");
    if (!r.ok()) return r.status();
    return Value(*r);
  }
  if (name == "upper" || name == "lower") return Value(MapCase(s, name == "upper"));
  if (name == "title") return Value(PyTitle(s));
  if (name == "capitalize") return Value(Capitalize(s));
  if (name == "replace") {
    MM_JINJA_BIND(a, where, args, {"old", "new", "count"});
    return Replace(s, a[0], a[1], a[2]);
  }
  if (name == "find" || name == "count" || name == "rfind") {
    MM_JINJA_BIND(a, where, args, {"sub"});
    if (!a[0].is_string()) return Error(where, "argument must be str");
    const std::string& sub = a[0].string();
    if (name == "count") {
      if (sub.empty()) return Value(static_cast<int64_t>(Characters(s).size()) + 1);
      int64_t n = 0;
      for (size_t at = s.find(sub); at != std::string::npos; at = s.find(sub, at + sub.size())) ++n;
      return Value(n);
    }
    const size_t at = name == "find" ? s.find(sub) : s.rfind(sub);
    if (at == std::string::npos) return Value(-1);
    return Value(static_cast<int64_t>(Characters(s.substr(0, at)).size()));
  }
  if (name == "join") {
    MM_JINJA_BIND(a, where, args, {"iterable"});
    auto items = Iterate(a[0]);
    if (!items.ok()) return items.status();
    std::string out;
    for (size_t i = 0; i < items->size(); ++i) {
      if (!(*items)[i].is_string()) return Error(where, "sequence item must be str");
      if (i) out += s;
      out += (*items)[i].string();
    }
    return Value(std::move(out));
  }
  if (name == "splitlines") {
    Array out;
    std::string line;
    for (const std::string& ch : Characters(s)) {
      if (ch == "\n" || ch == "\r") {
        out.emplace_back(std::move(line));
        line.clear();
      } else {
        line += ch;
      }
    }
    if (!line.empty()) out.emplace_back(std::move(line));
    return Value(std::move(out));
  }
  if (name == "isdigit" || name == "isspace" || name == "isalpha") {
    const std::vector<std::string> c = Characters(s);
    bool all = !c.empty();
    for (const std::string& ch : c) {
      const char32_t cp = CodePoint(ch);
      if (name == "isspace") all = all && IsPySpace(cp);
      else if (name == "isdigit") all = all && cp >= '0' && cp <= '9';
      else all = all && (utf8proc_category(static_cast<utf8proc_int32_t>(cp)) <= UTF8PROC_CATEGORY_LO);
    }
    return Value(all);
  }
  return Error(where, "no such method");
}

bool IsStringMethod(const std::string& name) {
  static const char* const kNames[] = {"strip",   "lstrip", "rstrip", "split",      "startswith", "endswith",
                                       "upper",   "lower",  "title",  "capitalize", "replace",    "find",
                                       "rfind",   "count",  "join",   "splitlines", "isdigit",    "isspace",
                                       "isalpha"};
  return std::find(std::begin(kNames), std::end(kNames), name) != std::end(kNames);
}

absl::StatusOr<Value> DictMethod(const Value& self, const std::string& name, CallArgs& args) {
  const std::string where = "dict." + name;
  if (name == "get") {
    MM_JINJA_BIND(a, where, args, {"key", "default"});
    const Value* v = a[0].is_string() ? self.object().Find(a[0].string()) : nullptr;
    if (v != nullptr) return *v;
    return Given(a[1]) ? a[1] : Value::None();
  }
  MM_RETURN_IF_ERROR(BindArgs(where, args, {}).status());
  Array out;
  for (const auto& [k, v] : self.object().items()) {
    if (name == "keys") out.emplace_back(k);
    else if (name == "values") out.push_back(v);
    else out.emplace_back(Array{Value(k), v}, /*tuple=*/true);
  }
  return Value(std::move(out));
}

bool IsDictMethod(const std::string& name) {
  return name == "items" || name == "keys" || name == "values" || name == "get";
}

Value Bound(const Value& self, const std::string& name) {
  if (self.is_string()) {
    return Value::Callable("str." + name, [s = self.string(), name](CallArgs& args) {
      return StringMethod(s, name, args);
    });
  }
  return Value::Callable("dict." + name, [self, name](CallArgs& args) { return DictMethod(self, name, args); });
}

// ---------------------------------------------------------------- filters

// Jinja2's make_attrgetter: "a.b" and "a.0" walk items, as `map(attribute=)`,
// `selectattr`, `sort(attribute=)` do.
absl::StatusOr<Value> Attribute(const Value& item, const Value& attribute) {
  if (attribute.is_int()) return GetItem(item, attribute);
  Value v = item;
  for (const std::string& part : std::vector<std::string>(absl::StrSplit(attribute.Str(), '.'))) {
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    absl::StatusOr<Value> next = digits ? GetItem(v, Value(static_cast<int64_t>(std::atoll(part.c_str()))))
                                        : GetItem(v, Value(part));
    if (!next.ok()) return next.status();
    v = *std::move(next);
  }
  return v;
}

absl::StatusOr<Value> FilterAbs(const Value& v, CallArgs& args) {
  MM_RETURN_IF_ERROR(BindArgs("abs", args, {}).status());
  if (v.is_float()) return Value(std::fabs(v.number()));
  if (v.is_number()) return Value(static_cast<int64_t>(std::llabs(v.integer())));
  return Error("abs", absl::StrCat("bad operand type for abs(): '", v.TypeName(), "'"));
}

absl::StatusOr<Value> FilterAttr(const Value& v, CallArgs& args) {
  MM_JINJA_BIND(a, "attr", args, {"name"});
  return GetAttr(v, a[0].Str());
}

absl::StatusOr<Value> FilterBatch(const Value& v, CallArgs& args) {
  MM_JINJA_BIND(a, "batch", args, {"linecount", "fill_with"});
  if (!a[0].is_int() || a[0].integer() < 1) return Error("batch", "linecount must be a positive integer");
  MM_ASSIGN_OR_RETURN(auto items, Iterate(v));
  Array out, row;
  for (const Value& item : items) {
    row.push_back(item);
    if (static_cast<int64_t>(row.size()) == a[0].integer()) out.emplace_back(std::exchange(row, {}));
  }
  if (!row.empty()) {
    if (Given(a[1]) && !a[1].is_none()) {
      while (static_cast<int64_t>(row.size()) < a[0].integer()) row.push_back(a[1]);
    }
    out.emplace_back(std::move(row));
  }
  return Value(std::move(out));
}

absl::StatusOr<Value> FilterCapitalize(const Value& v, CallArgs& args) {
  MM_RETURN_IF_ERROR(BindArgs("capitalize", args, {}).status());
  return Value(Capitalize(v.Str()));
}

absl::StatusOr<Value> FilterLength(const Value& v, CallArgs& args) {
  MM_RETURN_IF_ERROR(BindArgs("length", args, {}).status());
  MM_ASSIGN_OR_RETURN(auto n, Length(v));
  return Value(n);
}

absl::StatusOr<Value> FilterDefault(const Value& v, CallArgs& args) {
  MM_JINJA_BIND(a, "default", args, {"default_value", "boolean"});
  const bool use_default = v.is_undefined() || (a[1].Truthy() && !v.Truthy());
  if (!use_default) return v;
  return Given(a[0]) ? a[0] : Value("");
}

absl::StatusOr<Value> FilterDictsort(const Value& v, CallArgs& args) {
  MM_JINJA_BIND(a, "dictsort", args, {"case_sensitive", "by", "reverse"});
  if (!v.is_object()) return Error("dictsort", "you can only sort by either \"key\" or \"value\" of a dict");
  const int pos = !Given(a[1]) || a[1].Str() == "key" ? 0 : a[1].Str() == "value" ? 1 : -1;
  if (pos < 0) return Error("dictsort", "You can only sort by either \"key\" or \"value\"");
  std::vector<Value> items;
  for (const auto& [k, e] : v.object().items()) items.emplace_back(Array{Value(k), e}, true);
  const bool case_sensitive = a[0].Truthy();
  absl::Status failed;
  auto key = [&](const Value& item) {
    const Value& k = item.array()[static_cast<size_t>(pos)];
    return !case_sensitive && k.is_string() ? Value(MapCase(k.string(), false)) : k;
  };
  std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
    absl::StatusOr<bool> less = a[2].Truthy() ? Less(key(y), key(x)) : Less(key(x), key(y));
    if (!less.ok()) failed = less.status();
    return less.ok() && *less;
  });
  if (!failed.ok()) return failed;
  return Value(std::move(items));
}

absl::StatusOr<Value> FilterEscape(const Value& v, CallArgs& args) {
  MM_RETURN_IF_ERROR(BindArgs("escape", args, {}).status());
  return Value(absl::StrReplaceAll(v.Str(), {{"&", "&amp;"}, {"<", "&lt;"}, {">", "&gt;"}, {"\"", "&#34;"},
                                             {"'", "&#39;"}}));
}

absl::StatusOr<Value> FilterFirst(const Value& v, CallArgs& args) {
  MM_RETURN_IF_ERROR(BindArgs("first", args, {}).status());
  MM_ASSIGN_OR_RETURN(auto items, Iterate(v));
  if (items.empty()) return Value::Undefined("No first item, sequence was empty.");
  return items.front();
}

absl::StatusOr<Value> FilterLast(const Value& v, CallArgs& args) {
  MM_RETURN_IF_ERROR(BindArgs("last", args, {}).status());
  MM_ASSIGN_OR_RETURN(auto items, Iterate(v));
  if (items.empty()) return Value::Undefined("No last item, sequence was empty.");
  return items.back();
}

absl::StatusOr<Value> FilterFloat(const Value& v, CallArgs& args) {
  MM_JINJA_BIND(a, "float", args, {"default"});
  const Value fallback = Given(a[0]) ? a[0] : Value(0.0);
  if (v.is_number()) return Value(v.number());
  if (!v.is_string()) return fallback;
  MM_ASSIGN_OR_RETURN(auto s, Strip(v.string(), Value(), true, true));
  char* end = nullptr;
  const double f = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size()) return fallback;
  return Value(f);
}

absl::StatusOr<Value> FilterIndent(const Value& v, CallArgs& args) {
  MM_JINJA_BIND(a, "indent", args, {"width", "first", "blank"});
  const std::string indention =
      a[0].is_string() ? a[0].string() : std::string(static_cast<size_t>(Given(a[0]) ? a[0].integer() : 4), ' ');
  CallArgs none;
  MM_ASSIGN_OR_RETURN(auto lines_v, StringMethod(v.Str() + "\n", "splitlines", none));
  const Array& lines = lines_v.array();
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& line = lines[i].string();
    if (i > 0) out += "\n";
    if (i > 0 && (a[2].Truthy() || !line.empty())) out += indention;
    out += line;
  }
  if (a[1].Truthy()) out = indention + out;
  return Value(std::move(out));
}

absl::StatusOr<Value> FilterInt(const Value& v, CallArgs& args) {
  MM_JINJA_BIND(a, "int", args, {"default", "base"});
  const Value fallback = Given(a[0]) ? a[0] : Value(0);
  if (v.is_float()) return std::isfinite(v.number()) ? Value(static_cast<int64_t>(v.number())) : fallback;
  if (v.is_number()) return Value(v.integer());
  if (!v.is_string()) return fallback;
  MM_ASSIGN_OR_RETURN(auto s, Strip(v.string(), Value(), true, true));
  std::string digits;
  for (char c : s) {
    if (c != '_') digits += c;
  }
  char* end = nullptr;
  errno = 0;
  const long long i = std::strtoll(digits.c_str(), &end, Given(a[1]) ? static_cast<int>(a[1].integer()) : 10);
  if (!digits.empty() && end == digits.c_str() + digits.size() && errno == 0) return Value(static_cast<int64_t>(i));
  const double f = std::strtod(digits.c_str(), &end);
  if (!digits.empty() && end == digits.c_str() + digits.size() && std::isfinite(f)) {
    return Value(static_cast<int64_t>(f));
  }
  return fallback;
}

absl::StatusOr<Value> FilterItems(const Value& v, CallArgs& args) {
  MM_RETURN_IF_ERROR(BindArgs("items", args, {}).status());
  if (v.is_undefined()) return Value(Array{});
  if (!v.is_object() || v.is_namespace()) return Error("items", "can only get item pairs from a mapping");
  CallArgs none;
  return DictMethod(v, "items", none);
}

absl::StatusOr<Value> FilterJoin(const Value& v, CallArgs& args) {
  MM_JINJA_BIND(a, "join", args, {"d", "attribute"});
  MM_ASSIGN_OR_RETURN(auto items, Iterate(v));
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += a[0].Str();
    if (Given(a[1]) && !a[1].is_none()) {
      MM_ASSIGN_OR_RETURN(auto e, Attribute(items[i], a[1]));
      out += e.Str();
    } else {
      out += items[i].Str();
    }
  }
  return Value(std::move(out));
}

absl::StatusOr<Value> FilterList(const Value& v, CallArgs& args) {
  MM_RETURN_IF_ERROR(BindArgs("list", args, {}).status());
  MM_ASSIGN_OR_RETURN(auto items, Iterate(v));
  return Value(std::move(items));
}

absl::StatusOr<Value> FilterLower(const Value& v, CallArgs& args) {
  MM_RETURN_IF_ERROR(BindArgs("lower", args, {}).status());
  return Value(MapCase(v.Str(), false));
}

absl::StatusOr<Value> FilterUpper(const Value& v, CallArgs& args) {
  MM_RETURN_IF_ERROR(BindArgs("upper", args, {}).status());
  return Value(MapCase(v.Str(), true));
}

absl::StatusOr<Value> FilterMap(const Value& v, CallArgs& args) {
  MM_ASSIGN_OR_RETURN(auto items, Iterate(v));
  Array out;
  const Value* attribute = nullptr;
  const Value* fallback = nullptr;
  for (const auto& [k, e] : args.keyword) {
    if (k == "attribute") attribute = &e;
    else if (k == "default") fallback = &e;
  }
  if (attribute != nullptr) {
    for (const Value& item : items) {
      MM_ASSIGN_OR_RETURN(auto e, Attribute(item, *attribute));
      out.push_back(e.is_undefined() && fallback != nullptr ? *fallback : e);
    }
    return Value(std::move(out));
  }
  if (args.positional.empty() || !args.positional[0].is_string()) {
    return Error("map", "takes a filter name or attribute=");
  }
  const FilterFn f = FindFilter(args.positional[0].string());
  if (f == nullptr) return Error("map", absl::StrCat("no filter named '", args.positional[0].string(), "'"));
  for (const Value& item : items) {
    CallArgs rest{std::vector<Value>(args.positional.begin() + 1, args.positional.end()), args.keyword};
    MM_ASSIGN_OR_RETURN(auto e, f(item, rest));
    out.push_back(std::move(e));
  }
  return Value(std::move(out));
}

absl::StatusOr<Value> MinMax(const Value& v, CallArgs& args, bool max) {
  MM_JINJA_BIND(a, max ? "max" : "min", args, {"case_sensitive", "attribute"});
  MM_ASSIGN_OR_RETURN(auto items, Iterate(v));
  if (items.empty()) return Value::Undefined(absl::StrCat("No aggregated item, sequence was empty."));
  Value best = items[0], best_key;
  auto key = [&](const Value& item) -> absl::StatusOr<Value> {
    Value k = item;
    if (Given(a[1]) && !a[1].is_none()) {
      MM_ASSIGN_OR_RETURN(auto e, Attribute(item, a[1]));
      k = e;
    }
    return !a[0].Truthy() && k.is_string() ? Value(MapCase(k.string(), false)) : k;
  };
  MM_ASSIGN_OR_RETURN(auto first_key, key(items[0]));
  best_key = first_key;
  for (size_t i = 1; i < items.size(); ++i) {
    MM_ASSIGN_OR_RETURN(auto k, key(items[i]));
    MM_ASSIGN_OR_RETURN(auto better, max ? Less(best_key, k) : Less(k, best_key));
    if (better) best = items[i], best_key = k;
  }
  return best;
}
absl::StatusOr<Value> FilterMax(const Value& v, CallArgs& args) { return MinMax(v, args, true); }
absl::StatusOr<Value> FilterMin(const Value& v, CallArgs& args) { return MinMax(v, args, false); }

// select / reject / selectattr / rejectattr.
absl::StatusOr<Value> Select(const Value& v, CallArgs& args, bool by_attribute, bool keep) {
  const char* where = by_attribute ? (keep ? "selectattr" : "rejectattr") : (keep ? "select" : "reject");
  MM_ASSIGN_OR_RETURN(auto items, Iterate(v));
  size_t next = 0;
  Value attribute;
  if (by_attribute) {
    if (args.positional.empty()) return Error(where, "missing the attribute");
    attribute = args.positional[next++];
  }
  TestFn test = nullptr;
  if (next < args.positional.size()) {
    const Value& name = args.positional[next++];
    test = name.is_string() ? FindTest(name.string()) : nullptr;
    if (test == nullptr) return Error(where, absl::StrCat("no test named ", name.Repr()));
  }
  Array out;
  for (const Value& item : items) {
    Value operand = item;
    if (by_attribute) {
      MM_ASSIGN_OR_RETURN(auto e, Attribute(item, attribute));
      operand = e;
    }
    bool pass = operand.Truthy();
    if (test != nullptr) {
      CallArgs rest{std::vector<Value>(args.positional.begin() + static_cast<long>(next), args.positional.end()),
                    args.keyword};
      MM_ASSIGN_OR_RETURN(auto p, test(operand, rest));
      pass = p;
    }
    if (pass == keep) out.push_back(item);
  }
  return Value(std::move(out));
}
absl::StatusOr<Value> FilterSelect(const Value& v, CallArgs& args) { return Select(v, args, false, true); }
absl::StatusOr<Value> FilterReject(const Value& v, CallArgs& args) { return Select(v, args, false, false); }
absl::StatusOr<Value> FilterSelectattr(const Value& v, CallArgs& args) { return Select(v, args, true, true); }
absl::StatusOr<Value> FilterRejectattr(const Value& v, CallArgs& args) { return Select(v, args, true, false); }

absl::StatusOr<Value> FilterReplace(const Value& v, CallArgs& args) {
  MM_JINJA_BIND(a, "replace", args, {"old", "new", "count"});
  return Replace(v.Str(), Value(a[0].Str()), Value(a[1].Str()), a[2]);
}

absl::StatusOr<Value> FilterReverse(const Value& v, CallArgs& args) {
  MM_RETURN_IF_ERROR(BindArgs("reverse", args, {}).status());
  if (v.is_string()) return Slice(v, Value(), Value(), Value(-1));
  MM_ASSIGN_OR_RETURN(auto items, Iterate(v));
  std::reverse(items.begin(), items.end());
  return Value(std::move(items));
}

// Python's round(x, n): halves to even.
absl::StatusOr<Value> FilterRound(const Value& v, CallArgs& args) {
  MM_JINJA_BIND(a, "round", args, {"precision", "method"});
  if (!v.is_number()) return Error("round", absl::StrCat("type ", v.TypeName(), " doesn't define __round__"));
  const int64_t precision = Given(a[0]) ? a[0].integer() : 0;
  const std::string method = Given(a[1]) ? a[1].Str() : "common";
  const double scale = std::pow(10.0, static_cast<double>(precision));
  const double x = v.number() * scale;
  double r;
  if (method == "common") r = std::nearbyint(x);
  else if (method == "ceil") r = std::ceil(x);
  else if (method == "floor") r = std::floor(x);
  else return Error("round", "method must be 'common', 'ceil' or 'floor'");
  if (method == "common" && !v.is_float()) return Value(v.integer());
  return Value(r / scale);
}

absl::StatusOr<Value> FilterSafe(const Value& v, CallArgs& args) {
  MM_RETURN_IF_ERROR(BindArgs("safe", args, {}).status());
  return v;
}

absl::StatusOr<Value> FilterSort(const Value& v, CallArgs& args) {
  MM_JINJA_BIND(a, "sort", args, {"reverse", "case_sensitive", "attribute"});
  MM_ASSIGN_OR_RETURN(auto items, Iterate(v));
  std::vector<std::pair<Value, Value>> keyed;
  for (const Value& item : items) {
    Value k = item;
    if (Given(a[2]) && !a[2].is_none()) {
      MM_ASSIGN_OR_RETURN(auto e, Attribute(item, a[2]));
      k = e;
    }
    if (!a[1].Truthy() && k.is_string()) k = Value(MapCase(k.string(), false));
    keyed.emplace_back(std::move(k), item);
  }
  absl::Status failed;
  const bool reverse = a[0].Truthy();
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
    absl::StatusOr<bool> less = reverse ? Less(y.first, x.first) : Less(x.first, y.first);
    if (!less.ok()) failed = less.status();
    return less.ok() && *less;
  });
  if (!failed.ok()) return failed;
  Array out;
  for (auto& [k, item] : keyed) out.push_back(std::move(item));
  return Value(std::move(out));
}

absl::StatusOr<Value> FilterString(const Value& v, CallArgs& args) {
  MM_RETURN_IF_ERROR(BindArgs("string", args, {}).status());
  return Value(v.Str());
}

absl::StatusOr<Value> FilterSum(const Value& v, CallArgs& args) {
  MM_JINJA_BIND(a, "sum", args, {"attribute", "start"});
  MM_ASSIGN_OR_RETURN(auto items, Iterate(v));
  Value total = Given(a[1]) ? a[1] : Value(0);
  for (const Value& item : items) {
    Value e = item;
    if (Given(a[0]) && !a[0].is_none()) {
      MM_ASSIGN_OR_RETURN(auto x, Attribute(item, a[0]));
      e = x;
    }
    MM_ASSIGN_OR_RETURN(auto t, BinaryOp("+", total, e));
    total = std::move(t);
  }
  return total;
}

// Jinja2's title: words begin after whitespace, '-', and opening brackets.
absl::StatusOr<Value> FilterTitle(const Value& v, CallArgs& args) {
  MM_RETURN_IF_ERROR(BindArgs("title", args, {}).status());
  std::string out;
  bool word_start = true;
  for (const std::string& ch : Characters(v.Str())) {
    const bool boundary = IsPySpace(CodePoint(ch)) || ch == "-" || ch == "(" || ch == "{" || ch == "[" || ch == "<";
    out += boundary ? ch : MapCase(ch, word_start);
    word_start = boundary;
  }
  return Value(std::move(out));
}

// transformers' tojson: json.dumps(x, ensure_ascii=False, indent=indent,
// separators=separators, sort_keys=sort_keys).
absl::StatusOr<Value> FilterTojson(const Value& v, CallArgs& args) {
  MM_JINJA_BIND(a, "tojson", args, {"indent", "separators", "sort_keys"});
  JsonOptions o;
  if (Given(a[0]) && !a[0].is_none()) {
    o.pretty = true;
    if (a[0].is_string()) o.indent = a[0].string();
    else if (a[0].is_int()) o.indent = std::string(static_cast<size_t>(std::clamp<int64_t>(a[0].integer(), 0, 64)), ' ');
    else return Error("tojson", "indent must be an integer or a string");
  }
  if (Given(a[1]) && !a[1].is_none()) {
    if (!a[1].is_array() || a[1].array().size() != 2 || !a[1].array()[0].is_string() ||
        !a[1].array()[1].is_string()) {
      return Error("tojson", "separators must be a pair of strings");
    }
    o.item_separator = a[1].array()[0].string();
    o.key_separator = a[1].array()[1].string();
    if (o.item_separator.empty()) o.item_separator = o.pretty ? "," : ", ";
  }
  o.sort_keys = a[2].Truthy();
  MM_ASSIGN_OR_RETURN(auto s, ToJson(v, o));
  return Value(std::move(s));
}

absl::StatusOr<Value> FilterTrim(const Value& v, CallArgs& args) {
  MM_JINJA_BIND(a, "trim", args, {"chars"});
  MM_ASSIGN_OR_RETURN(auto s, Strip(v.Str(), a[0], true, true));
  return Value(std::move(s));
}

absl::StatusOr<Value> FilterUnique(const Value& v, CallArgs& args) {
  MM_JINJA_BIND(a, "unique", args, {"case_sensitive", "attribute"});
  MM_ASSIGN_OR_RETURN(auto items, Iterate(v));
  Array out, seen;
  for (const Value& item : items) {
    Value k = item;
    if (Given(a[1]) && !a[1].is_none()) {
      MM_ASSIGN_OR_RETURN(auto e, Attribute(item, a[1]));
      k = e;
    }
    if (!a[0].Truthy() && k.is_string()) k = Value(MapCase(k.string(), false));
    if (std::any_of(seen.begin(), seen.end(), [&](const Value& s) { return s.Equals(k); })) continue;
    seen.push_back(k);
    out.push_back(item);
  }
  return Value(std::move(out));
}

absl::StatusOr<Value> FilterWordcount(const Value& v, CallArgs& args) {
  MM_RETURN_IF_ERROR(BindArgs("wordcount", args, {}).status());
  MM_ASSIGN_OR_RETURN(auto words, Split(v.Str(), Value(), Value()));
  return Value(static_cast<int64_t>(words.array().size()));
}

// ------------------------------------------------------------------ tests

template <bool (*kPredicate)(const Value&)>
absl::StatusOr<bool> Unary(const Value& v, CallArgs& args) {
  MM_RETURN_IF_ERROR(BindArgs("test", args, {}).status());
  return kPredicate(v);
}

bool Defined(const Value& v) { return !v.is_undefined(); }
bool IsUndefined(const Value& v) { return v.is_undefined(); }
bool IsNone(const Value& v) { return v.is_none(); }
bool IsBoolean(const Value& v) { return v.is_bool(); }
bool IsTrue(const Value& v) { return v.is_bool() && v.boolean(); }
bool IsFalse(const Value& v) { return v.is_bool() && !v.boolean(); }
bool IsInteger(const Value& v) { return v.is_int(); }
bool IsFloat(const Value& v) { return v.is_float(); }
bool IsNumber(const Value& v) { return v.is_number(); }
bool IsString(const Value& v) { return v.is_string(); }
bool IsMapping(const Value& v) { return v.is_object() && !v.is_namespace(); }
bool IsIterable(const Value& v) { return v.is_undefined() || v.is_string() || v.is_array() || IsMapping(v); }
bool IsSequence(const Value& v) { return IsIterable(v); }
bool IsCallable(const Value& v) { return v.is_function(); }
bool IsOdd(const Value& v) { return (v.is_int() || v.is_bool()) && (v.integer() % 2 != 0); }
bool IsEven(const Value& v) { return (v.is_int() || v.is_bool()) && v.integer() % 2 == 0; }
bool IsLower(const Value& v) {
  const std::string s = v.Str();
  return MapCase(s, false) == s && MapCase(s, true) != s;
}
bool IsUpper(const Value& v) {
  const std::string s = v.Str();
  return MapCase(s, true) == s && MapCase(s, false) != s;
}

template <const char* kOp>
absl::StatusOr<bool> Comparison(const Value& v, CallArgs& args) {
  MM_JINJA_BIND(a, kOp, args, {"other"});
  return Compare(kOp, v, a[0]);
}
constexpr char kEq[] = "==", kNe[] = "!=", kLt[] = "<", kLe[] = "<=", kGt[] = ">", kGe[] = ">=", kIn[] = "in";

absl::StatusOr<bool> TestSameas(const Value& v, CallArgs& args) {
  MM_JINJA_BIND(a, "sameas", args, {"other"});
  if (v.is_none() || v.is_bool() || v.is_undefined()) return v.kind() == a[0].kind() && v.Equals(a[0]);
  return v.kind() == a[0].kind() && (v.is_int() || v.is_string()) && v.Equals(a[0]);
}

absl::StatusOr<bool> TestDivisibleby(const Value& v, CallArgs& args) {
  MM_JINJA_BIND(a, "divisibleby", args, {"num"});
  MM_ASSIGN_OR_RETURN(auto m, BinaryOp("%", v, a[0]));
  return m.is_number() && m.number() == 0;
}

}  // namespace

absl::StatusOr<std::vector<Value>> BindArgs(absl::string_view function, const CallArgs& args,
                                            std::initializer_list<const char*> names) {
  std::vector<Value> out(names.size());
  if (args.positional.size() > names.size()) {
    return Error(function, absl::StrCat("takes at most ", names.size(), " argument(s), ", args.positional.size(),
                                        " given"));
  }
  for (size_t i = 0; i < args.positional.size(); ++i) out[i] = args.positional[i];
  for (const auto& [k, v] : args.keyword) {
    const std::string& key = k;  // structured bindings cannot be captured in C++17
    const auto* it = std::find_if(names.begin(), names.end(), [&](const char* n) { return key == n; });
    if (it == names.end()) return Error(function, absl::StrCat("unexpected keyword argument '", k, "'"));
    const size_t i = static_cast<size_t>(it - names.begin());
    if (i < args.positional.size()) return Error(function, absl::StrCat("got multiple values for '", k, "'"));
    out[i] = v;
  }
  return out;
}

FilterFn FindFilter(absl::string_view name) {
  static const auto* const kFilters = new absl::flat_hash_map<std::string, FilterFn>{
      {"abs", FilterAbs},         {"attr", FilterAttr},         {"batch", FilterBatch},
      {"capitalize", FilterCapitalize}, {"count", FilterLength}, {"d", FilterDefault},
      {"default", FilterDefault}, {"dictsort", FilterDictsort}, {"e", FilterEscape},
      {"escape", FilterEscape},   {"first", FilterFirst},       {"float", FilterFloat},
      {"indent", FilterIndent},   {"int", FilterInt},           {"items", FilterItems},
      {"join", FilterJoin},       {"last", FilterLast},         {"length", FilterLength},
      {"list", FilterList},       {"lower", FilterLower},       {"map", FilterMap},
      {"max", FilterMax},         {"min", FilterMin},           {"reject", FilterReject},
      {"rejectattr", FilterRejectattr}, {"replace", FilterReplace}, {"reverse", FilterReverse},
      {"round", FilterRound},     {"safe", FilterSafe},         {"select", FilterSelect},
      {"selectattr", FilterSelectattr}, {"sort", FilterSort},   {"string", FilterString},
      {"sum", FilterSum},         {"title", FilterTitle},       {"tojson", FilterTojson},
      {"trim", FilterTrim},       {"unique", FilterUnique},     {"upper", FilterUpper},
      {"wordcount", FilterWordcount}};
  auto it = kFilters->find(name);
  return it == kFilters->end() ? nullptr : it->second;
}

TestFn FindTest(absl::string_view name) {
  static const auto* const kTests = new absl::flat_hash_map<std::string, TestFn>{
      {"defined", Unary<Defined>},      {"undefined", Unary<IsUndefined>}, {"none", Unary<IsNone>},
      {"boolean", Unary<IsBoolean>},    {"true", Unary<IsTrue>},           {"false", Unary<IsFalse>},
      {"integer", Unary<IsInteger>},    {"float", Unary<IsFloat>},         {"number", Unary<IsNumber>},
      {"string", Unary<IsString>},      {"mapping", Unary<IsMapping>},     {"iterable", Unary<IsIterable>},
      {"sequence", Unary<IsSequence>},  {"callable", Unary<IsCallable>},   {"odd", Unary<IsOdd>},
      {"even", Unary<IsEven>},          {"lower", Unary<IsLower>},         {"upper", Unary<IsUpper>},
      {"eq", Comparison<kEq>},          {"equalto", Comparison<kEq>},      {"==", Comparison<kEq>},
      {"ne", Comparison<kNe>},          {"!=", Comparison<kNe>},           {"lt", Comparison<kLt>},
      {"lessthan", Comparison<kLt>},    {"<", Comparison<kLt>},            {"le", Comparison<kLe>},
      {"<=", Comparison<kLe>},          {"gt", Comparison<kGt>},           {"greaterthan", Comparison<kGt>},
      {">", Comparison<kGt>},           {"ge", Comparison<kGe>},           {">=", Comparison<kGe>},
      {"in", Comparison<kIn>},          {"sameas", TestSameas},            {"divisibleby", TestDivisibleby}};
  auto it = kTests->find(name);
  return it == kTests->end() ? nullptr : it->second;
}

absl::StatusOr<Value> GetAttr(const Value& obj, const std::string& name) {
  switch (obj.kind()) {
    case Value::Kind::kUndefined:
      return absl::InvalidArgumentError(obj.UndefinedMessage());
    case Value::Kind::kString:
      if (IsStringMethod(name)) return Bound(obj, name);
      break;
    case Value::Kind::kObject:
      if (!obj.is_namespace() && IsDictMethod(name)) return Bound(obj, name);
      if (const Value* v = obj.object().Find(name)) return *v;
      break;
    default:
      break;
  }
  return Value::Undefined(absl::StrCat("'", obj.TypeName(), " object' has no attribute '", name, "'"));
}

absl::StatusOr<Value> GetItem(const Value& obj, const Value& key) {
  switch (obj.kind()) {
    case Value::Kind::kUndefined:
      return absl::InvalidArgumentError(obj.UndefinedMessage());
    case Value::Kind::kObject:
      if (key.is_string()) {
        if (const Value* v = obj.object().Find(key.string())) return *v;
        if (!obj.is_namespace() && IsDictMethod(key.string())) return Bound(obj, key.string());
      }
      return Value::Undefined(absl::StrCat("'", obj.TypeName(), " object' has no attribute ", key.Repr()));
    case Value::Kind::kArray:
    case Value::Kind::kString:
      if (key.is_int() || key.is_bool()) {
        std::vector<std::string> chars;
        if (obj.is_string()) chars = Characters(obj.string());
        const int64_t n = obj.is_string() ? static_cast<int64_t>(chars.size()) : static_cast<int64_t>(obj.array().size());
        int64_t i = key.integer();
        if (i < 0) i += n;
        if (i >= 0 && i < n) return obj.is_string() ? Value(chars[static_cast<size_t>(i)]) : obj.array()[static_cast<size_t>(i)];
        return Value::Undefined(absl::StrCat("'", obj.TypeName(), " object' has no element ", key.integer()));
      }
      if (key.is_string() && obj.is_string() && IsStringMethod(key.string())) return Bound(obj, key.string());
      break;
    default:
      break;
  }
  return Value::Undefined(absl::StrCat("'", obj.TypeName(), " object' has no attribute ", key.Repr()));
}

void AddGlobals(Object* globals) {
  globals->Set("range", Value::Callable("range", [](CallArgs& args) -> absl::StatusOr<Value> {
    if (!args.keyword.empty() || args.positional.empty() || args.positional.size() > 3) {
      return Error("range", "expected 1 to 3 integer arguments");
    }
    for (const Value& v : args.positional) {
      if (!v.is_int() && !v.is_bool()) return Error("range", "arguments must be integers");
    }
    const auto& p = args.positional;
    const int64_t start = p.size() > 1 ? p[0].integer() : 0, stop = p.size() > 1 ? p[1].integer() : p[0].integer(),
                  step = p.size() > 2 ? p[2].integer() : 1;
    if (step == 0) return Error("range", "arg 3 must not be zero");
    Array out;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
      if (out.size() >= 100000) return Error("range", "range too big, the sandbox allows 100000 items");
      out.emplace_back(i);
    }
    return Value(std::move(out));
  }));
  globals->Set("dict", Value::Callable("dict", [](CallArgs& args) -> absl::StatusOr<Value> {
    if (!args.positional.empty()) return Error("dict", "takes keyword arguments only");
    Object o;
    for (auto& [k, v] : args.keyword) o.Set(k, v);
    return Value(std::move(o));
  }));
  globals->Set("namespace", Value::Callable("namespace", [](CallArgs& args) -> absl::StatusOr<Value> {
    Object o;
    if (args.positional.size() > 1) return Error("namespace", "takes at most one dict");
    if (!args.positional.empty()) {
      if (!IsMapping(args.positional[0])) return Error("namespace", "positional argument must be a dict");
      for (const auto& [k, v] : args.positional[0].object().items()) o.Set(k, v);
    }
    for (auto& [k, v] : args.keyword) o.Set(k, v);
    return Value(std::move(o), /*is_namespace=*/true);
  }));
}

}  // namespace moemesh::jinja
