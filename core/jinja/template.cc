#include "core/jinja/template.h"

#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/jinja/ast.h"
#include "core/jinja/builtins.h"
#include "core/jinja/operators.h"
#include "core/jinja/parser.h"

namespace moemesh::jinja {
namespace {

// Bounds on what one render may do: recursion through macros, and work (a
// real template over a long conversation takes thousands of steps).
constexpr int kMaxCallDepth = 100;
constexpr int64_t kMaxSteps = int64_t{1} << 24;

using Frame = absl::flat_hash_map<std::string, Value>;

// The message prefixed with the template line, once; payloads kept.
absl::Status AtLine(int line, const absl::Status& st) {
  if (st.ok() || absl::StartsWith(st.message(), "line ")) return st;
  absl::Status out(st.code(), absl::StrCat("line ", line, ": ", st.message()));
  st.ForEachPayload([&](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  return out;
}

class Renderer {
 public:
  explicit Renderer(Frame root) { frames_.push_back(std::move(root)); }

  absl::Status Exec(const Body& body, std::string* out) {
    for (const StmtPtr& s : body) {
      if (++steps_ > kMaxSteps) return absl::ResourceExhaustedError("template ran over 16M steps");
      MM_RETURN_IF_ERROR(AtLine(s->line, ExecOne(*s, out)));
      if (out->size() > kMaxStringBytes) return absl::ResourceExhaustedError("template output over 64 MiB");
      if (flow_ != Flow::kNormal) return absl::OkStatus();
    }
    return absl::OkStatus();
  }

 private:
  enum class Flow { kNormal, kBreak, kContinue };

  Value Lookup(const std::string& name) const {
    for (auto it = frames_.rbegin(); it != frames_.rend(); ++it) {
      auto found = it->find(name);
      if (found != it->end()) return found->second;
    }
    return Value::Undefined(absl::StrCat("'", name, "' is undefined"));
  }

  absl::Status Assign(const std::vector<std::string>& targets, const Value& v) {
    if (targets.size() == 1) {
      frames_.back()[targets[0]] = v;
      return absl::OkStatus();
    }
    MM_ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v));
    if (items.size() != targets.size()) {
      return absl::InvalidArgumentError(absl::StrCat("cannot unpack ", items.size(), " values into ", targets.size(),
                                                     " names"));
    }
    for (size_t i = 0; i < targets.size(); ++i) frames_.back()[targets[i]] = items[i];
    return absl::OkStatus();
  }

  absl::Status ExecOne(const Stmt& s, std::string* out) {
    switch (s.kind) {
      case Stmt::Kind::kData:
        *out += s.text;
        return absl::OkStatus();
      case Stmt::Kind::kOutput: {
        MM_ASSIGN_OR_RETURN(Value v, Eval(*s.expr));
        *out += v.Str();
        return absl::OkStatus();
      }
      case Stmt::Kind::kIf:
        for (size_t i = 0; i < s.conditions.size(); ++i) {
          MM_ASSIGN_OR_RETURN(Value c, Eval(*s.conditions[i]));
          if (c.Truthy()) return Exec(s.bodies[i], out);
        }
        return Exec(s.else_body, out);
      case Stmt::Kind::kFor:
        return For(s, out);
      case Stmt::Kind::kSet: {
        MM_ASSIGN_OR_RETURN(Value v, Eval(*s.expr));
        if (s.target_attr.empty()) return Assign(s.targets, v);
        const Value ns = Lookup(s.targets[0]);
        if (!ns.is_namespace()) {
          return absl::InvalidArgumentError(absl::StrCat("cannot assign attribute on non-namespace object '",
                                                         s.targets[0], "'"));
        }
        ns.mutable_object()->Set(s.target_attr, std::move(v));
        return absl::OkStatus();
      }
      case Stmt::Kind::kSetBlock: {
        std::string text;
        MM_RETURN_IF_ERROR(Exec(s.bodies[0], &text));
        Value v(std::move(text));
        if (s.expr != nullptr) {
          MM_ASSIGN_OR_RETURN(v, ApplyFilters(*s.expr, v));
        }
        return Assign(s.targets, v);
      }
      case Stmt::Kind::kMacro:
        frames_.back()[s.name] = MakeMacro(s);
        return absl::OkStatus();
      case Stmt::Kind::kCallBlock:
        return CallBlock(s, out);
      case Stmt::Kind::kBreak:
        flow_ = Flow::kBreak;
        return absl::OkStatus();
      case Stmt::Kind::kContinue:
        flow_ = Flow::kContinue;
        return absl::OkStatus();
      case Stmt::Kind::kFilterBlock: {
        std::string text;
        MM_RETURN_IF_ERROR(Exec(s.bodies[0], &text));
        MM_ASSIGN_OR_RETURN(Value v, ApplyFilters(*s.expr, Value(std::move(text))));
        *out += v.Str();
        return absl::OkStatus();
      }
      case Stmt::Kind::kWith: {
        Frame frame;
        for (const auto& [name, e] : s.params) {
          MM_ASSIGN_OR_RETURN(Value v, Eval(*e));
          frame[name] = std::move(v);
        }
        frames_.push_back(std::move(frame));
        absl::Status st = Exec(s.bodies[0], out);
        frames_.pop_back();
        return st;
      }
      case Stmt::Kind::kScope:
        return Exec(s.bodies[0], out);
    }
    return absl::InternalError("unknown statement");
  }

  // A loop's items (after its `if`), each with `loop` in a frame of the
  // loop's own: what the body sets stays inside the loop, as in Jinja2.
  absl::Status For(const Stmt& s, std::string* out) {
    MM_ASSIGN_OR_RETURN(Value iterable, Eval(*s.expr));
    MM_ASSIGN_OR_RETURN(std::vector<Value> all, Iterate(iterable));
    frames_.emplace_back();
    std::vector<Value> items;
    for (Value& item : all) {
      if (s.condition != nullptr) {
        if (absl::Status st = Assign(s.targets, item); !st.ok()) return Pop(st);
        absl::StatusOr<Value> keep = Eval(*s.condition);
        if (!keep.ok()) return Pop(keep.status());
        if (!keep->Truthy()) continue;
      }
      items.push_back(std::move(item));
    }
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      if (absl::Status st = Assign(s.targets, items[static_cast<size_t>(i)]); !st.ok()) return Pop(st);
      Object loop;
      loop.Set("index", Value(i + 1));
      loop.Set("index0", Value(i));
      loop.Set("revindex", Value(n - i));
      loop.Set("revindex0", Value(n - i - 1));
      loop.Set("first", Value(i == 0));
      loop.Set("last", Value(i == n - 1));
      loop.Set("length", Value(n));
      loop.Set("depth", Value(1));
      loop.Set("depth0", Value(0));
      loop.Set("previtem", i > 0 ? items[static_cast<size_t>(i - 1)]
                                 : Value::Undefined("there is no previous item"));
      loop.Set("nextitem", i + 1 < n ? items[static_cast<size_t>(i + 1)] : Value::Undefined("there is no next item"));
      loop.Set("cycle", Value::Callable("loop.cycle", [i](CallArgs& args) -> absl::StatusOr<Value> {
        if (args.positional.empty()) return absl::InvalidArgumentError("loop.cycle: no items given");
        return args.positional[static_cast<size_t>(i) % args.positional.size()];
      }));
      frames_.back()["loop"] = Value(std::move(loop));
      if (absl::Status st = Exec(s.bodies[0], out); !st.ok()) return Pop(st);
      const Flow flow = std::exchange(flow_, Flow::kNormal);
      if (flow == Flow::kBreak) break;
    }
    frames_.pop_back();
    if (n == 0) return Exec(s.else_body, out);
    return absl::OkStatus();
  }

  absl::Status Pop(absl::Status st) {
    frames_.pop_back();
    return st;
  }

  // A macro: called with arguments, it renders its body in a frame of its
  // own over the template's top level, and returns the text.
  Value MakeMacro(const Stmt& s) {
    const Stmt* macro = &s;
    return Value::Callable(s.name, [this, macro](CallArgs& args) -> absl::StatusOr<Value> {
      if (args.positional.size() > macro->params.size()) {
        return absl::InvalidArgumentError(absl::StrCat("macro '", macro->name, "' takes not more than ",
                                                       macro->params.size(), " argument(s)"));
      }
      Frame frame;
      for (auto& [k, v] : args.keyword) {
        const std::string& key = k;  // structured bindings cannot be captured in C++17
        const bool known = key == "caller" || std::any_of(macro->params.begin(), macro->params.end(),
                                                           [&](const auto& p) { return p.first == key; });
        if (!known) {
          return absl::InvalidArgumentError(absl::StrCat("macro '", macro->name, "' takes no keyword argument '", k,
                                                         "'"));
        }
        frame[k] = v;
      }
      for (size_t i = 0; i < args.positional.size(); ++i) frame[macro->params[i].first] = args.positional[i];
      return Invoke(*macro, std::move(frame), macro->bodies[0]);
    });
  }

  // Runs `body` in `frame` over the template's top level (for a macro) and
  // fills in parameters left out from their defaults.
  absl::StatusOr<Value> Invoke(const Stmt& s, Frame frame, const Body& body) {
    if (++depth_ > kMaxCallDepth) {
      --depth_;
      return absl::ResourceExhaustedError(absl::StrCat("macro calls nested deeper than ", kMaxCallDepth));
    }
    std::vector<Frame> saved = std::move(frames_);
    frames_.clear();
    frames_.push_back(saved.front());
    frames_.push_back(std::move(frame));
    absl::Status st;
    for (const auto& [name, dflt] : s.params) {
      if (frames_.back().contains(name)) continue;
      if (dflt == nullptr) {
        frames_.back()[name] = Value::Undefined(absl::StrCat("'", name, "' is undefined"));
        continue;
      }
      absl::StatusOr<Value> v = Eval(*dflt);
      if (!v.ok()) {
        st = v.status();
        break;
      }
      frames_.back()[name] = *std::move(v);
    }
    std::string text;
    if (st.ok()) st = Exec(body, &text);
    frames_ = std::move(saved);
    --depth_;
    if (!st.ok()) return st;
    return Value(std::move(text));
  }

  // `{% call m(args) %}body{% endcall %}`: m runs with `caller`, which
  // renders the body where the call stands.
  absl::Status CallBlock(const Stmt& s, std::string* out) {
    const Stmt* block = &s;
    std::vector<Frame> site = frames_;
    Value caller = Value::Callable("caller", [this, block, site](CallArgs& args) -> absl::StatusOr<Value> {
      Frame frame;
      for (size_t i = 0; i < args.positional.size() && i < block->params.size(); ++i) {
        frame[block->params[i].first] = args.positional[i];
      }
      std::vector<Frame> saved = std::move(frames_);
      frames_ = site;
      frames_.push_back(std::move(frame));
      std::string text;
      absl::Status st = Exec(block->bodies[0], &text);
      frames_ = std::move(saved);
      if (!st.ok()) return st;
      return Value(std::move(text));
    });
    const Expr& call = *s.expr;
    MM_ASSIGN_OR_RETURN(Value callee, Eval(*call.children[0]));
    MM_ASSIGN_OR_RETURN(CallArgs args, EvalArgs(call));
    args.keyword.emplace_back("caller", std::move(caller));
    MM_ASSIGN_OR_RETURN(Value v, CallValue(callee, args));
    *out += v.Str();
    return absl::OkStatus();
  }

  absl::StatusOr<CallArgs> EvalArgs(const Expr& e) {
    CallArgs args;
    for (size_t i = 1; i < e.children.size(); ++i) {
      MM_ASSIGN_OR_RETURN(Value v, Eval(*e.children[i]));
      args.positional.push_back(std::move(v));
    }
    for (const auto& [k, x] : e.kwargs) {
      MM_ASSIGN_OR_RETURN(Value v, Eval(*x));
      args.keyword.emplace_back(k, std::move(v));
    }
    return args;
  }

  static absl::StatusOr<Value> CallValue(const Value& callee, CallArgs& args) {
    if (callee.is_function()) return callee.Call(args);
    if (callee.is_undefined()) return absl::InvalidArgumentError(callee.UndefinedMessage());
    return absl::InvalidArgumentError(absl::StrCat("'", callee.TypeName(), "' object is not callable"));
  }

  // A chain of filters whose innermost operand is null: `input` stands there.
  absl::StatusOr<Value> ApplyFilters(const Expr& f, const Value& input) {
    Value operand = input;
    if (f.children[0] != nullptr) {
      MM_ASSIGN_OR_RETURN(operand, ApplyFilters(*f.children[0], input));
    }
    MM_ASSIGN_OR_RETURN(CallArgs args, EvalArgs(f));
    return f.filter(operand, args);
  }

  absl::StatusOr<Value> Eval(const Expr& e) {
    absl::StatusOr<Value> v = EvalInner(e);
    if (!v.ok()) return AtLine(e.line, v.status());
    return v;
  }

  absl::StatusOr<Value> EvalInner(const Expr& e) {
    if (++steps_ > kMaxSteps) return absl::ResourceExhaustedError("template ran over 16M steps");
    switch (e.kind) {
      case Expr::Kind::kLiteral:
        return e.value;
      case Expr::Kind::kName:
        return Lookup(e.name);
      case Expr::Kind::kList:
      case Expr::Kind::kTuple: {
        Array items;
        for (const ExprPtr& c : e.children) {
          MM_ASSIGN_OR_RETURN(Value v, Eval(*c));
          items.push_back(std::move(v));
        }
        return Value(std::move(items), e.kind == Expr::Kind::kTuple);
      }
      case Expr::Kind::kDict: {
        Object o;
        for (size_t i = 0; i + 1 < e.children.size(); i += 2) {
          MM_ASSIGN_OR_RETURN(Value k, Eval(*e.children[i]));
          MM_ASSIGN_OR_RETURN(Value v, Eval(*e.children[i + 1]));
          if (!k.is_string()) return absl::UnimplementedError("dict literals take string keys only");
          o.Set(k.string(), std::move(v));
        }
        return Value(std::move(o));
      }
      case Expr::Kind::kAttr: {
        MM_ASSIGN_OR_RETURN(Value obj, Eval(*e.children[0]));
        return GetAttr(obj, e.name);
      }
      case Expr::Kind::kItem: {
        MM_ASSIGN_OR_RETURN(Value obj, Eval(*e.children[0]));
        MM_ASSIGN_OR_RETURN(Value key, Eval(*e.children[1]));
        return GetItem(obj, key);
      }
      case Expr::Kind::kSlice: {
        MM_ASSIGN_OR_RETURN(Value obj, Eval(*e.children[0]));
        Value bounds[3];
        for (int i = 0; i < 3; ++i) {
          if (e.children[static_cast<size_t>(i) + 1] == nullptr) continue;
          MM_ASSIGN_OR_RETURN(bounds[i], Eval(*e.children[static_cast<size_t>(i) + 1]));
        }
        return Slice(obj, bounds[0], bounds[1], bounds[2]);
      }
      case Expr::Kind::kCall: {
        MM_ASSIGN_OR_RETURN(Value callee, Eval(*e.children[0]));
        MM_ASSIGN_OR_RETURN(CallArgs args, EvalArgs(e));
        return CallValue(callee, args);
      }
      case Expr::Kind::kFilter: {
        MM_ASSIGN_OR_RETURN(Value operand, Eval(*e.children[0]));
        MM_ASSIGN_OR_RETURN(CallArgs args, EvalArgs(e));
        return e.filter(operand, args);
      }
      case Expr::Kind::kTest: {
        MM_ASSIGN_OR_RETURN(Value operand, Eval(*e.children[0]));
        MM_ASSIGN_OR_RETURN(CallArgs args, EvalArgs(e));
        MM_ASSIGN_OR_RETURN(bool pass, e.test(operand, args));
        return Value(pass != e.negated);
      }
      case Expr::Kind::kUnary: {
        MM_ASSIGN_OR_RETURN(Value v, Eval(*e.children[0]));
        if (e.name == "not") return Value(!v.Truthy());
        return UnaryOp(e.name, v);
      }
      case Expr::Kind::kBinary: {
        MM_ASSIGN_OR_RETURN(Value a, Eval(*e.children[0]));
        if (e.name == "and" && !a.Truthy()) return a;
        if (e.name == "or" && a.Truthy()) return a;
        MM_ASSIGN_OR_RETURN(Value b, Eval(*e.children[1]));
        if (e.name == "and" || e.name == "or") return b;
        return BinaryOp(e.name, a, b);
      }
      case Expr::Kind::kCompare: {
        MM_ASSIGN_OR_RETURN(Value left, Eval(*e.children[0]));
        for (size_t i = 0; i < e.ops.size(); ++i) {
          MM_ASSIGN_OR_RETURN(Value right, Eval(*e.children[i + 1]));
          MM_ASSIGN_OR_RETURN(bool holds, Compare(e.ops[i], left, right));
          if (!holds) return Value(false);
          left = std::move(right);
        }
        return Value(true);
      }
      case Expr::Kind::kCondition: {
        MM_ASSIGN_OR_RETURN(Value c, Eval(*e.children[1]));
        if (c.Truthy()) return Eval(*e.children[0]);
        if (e.children[2] == nullptr) return Value::Undefined("the inline if-expression evaluated to false and no else section was defined");
        return Eval(*e.children[2]);
      }
    }
    return absl::InternalError("unknown expression");
  }

  std::vector<Frame> frames_;
  Flow flow_ = Flow::kNormal;
  int depth_ = 0;
  int64_t steps_ = 0;
};

}  // namespace

Template::Template(std::vector<std::unique_ptr<Stmt>> body) : body_(std::move(body)) {}
Template::~Template() = default;

absl::StatusOr<std::unique_ptr<Template>> Template::Parse(absl::string_view source, const LexerOptions& options) {
  MM_ASSIGN_OR_RETURN(std::vector<Token> tokens, Tokenize(source, options));
  MM_ASSIGN_OR_RETURN(Body body, jinja::Parse(tokens));
  return std::unique_ptr<Template>(new Template(std::move(body)));
}

absl::StatusOr<std::string> Template::Render(const Object& context) const {
  Object globals;
  AddGlobals(&globals);
  Frame root;
  for (const auto& [k, v] : globals.items()) root[k] = v;
  for (const auto& [k, v] : context.items()) root[k] = v;
  Renderer r(std::move(root));
  std::string out;
  MM_RETURN_IF_ERROR(r.Exec(body_, &out));
  return out;
}

}  // namespace moemesh::jinja
