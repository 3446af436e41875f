#include "core/jinja/parser.h"

#include <algorithm>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/common/status_macros.h"

namespace moemesh::jinja {
namespace {

using T = Token::Type;

// Deep enough for any real template; bounds the recursion on hostile ones.
constexpr int kMaxDepth = 200;

class Parser {
 public:
  explicit Parser(const std::vector<Token>& tokens) : t_(tokens) {}

  absl::StatusOr<Body> Run() {
    std::string end;
    MM_ASSIGN_OR_RETURN(Body body, Subparse({}, &end));
    return body;
  }

 private:
  const Token& Cur() const { return t_[pos_]; }
  const Token& Peek(size_t n = 1) const { return t_[std::min(pos_ + n, t_.size() - 1)]; }
  void Next() {
    if (pos_ + 1 < t_.size()) ++pos_;
  }
  bool IsName(absl::string_view name) const { return Cur().type == T::kName && Cur().text == name; }
  bool IsOp(absl::string_view op) const { return Cur().type == T::kOperator && Cur().text == op; }
  bool SkipName(absl::string_view name) {
    if (!IsName(name)) return false;
    Next();
    return true;
  }
  bool SkipOp(absl::string_view op) {
    if (!IsOp(op)) return false;
    Next();
    return true;
  }

  static std::string Describe(const Token& t) {
    switch (t.type) {
      case T::kEnd: return "end of template";
      case T::kBlockEnd: return "end of statement block";
      case T::kVariableEnd: return "end of print statement";
      case T::kData: return "template data";
      case T::kString: return "string";
      default: return absl::StrCat("'", t.text, "'");
    }
  }

  absl::Status Error(absl::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat("template syntax error, line ", Cur().line, ": ", message));
  }
  absl::Status Unexpected(absl::string_view expected) const {
    return Error(absl::StrCat("expected ", expected, ", got ", Describe(Cur())));
  }
  absl::Status ExpectOp(absl::string_view op) {
    if (!SkipOp(op)) return Unexpected(absl::StrCat("'", op, "'"));
    return absl::OkStatus();
  }
  absl::Status ExpectBlockEnd() {
    if (Cur().type != T::kBlockEnd) return Unexpected("end of statement block");
    Next();
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> ExpectName() {
    if (Cur().type != T::kName) return Unexpected("a name");
    std::string name = Cur().text;
    Next();
    return name;
  }

  ExprPtr Make(Expr::Kind kind, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    return e;
  }

  // ------------------------------------------------------------ statements

  // Statements until a block tag named in `ends` (its name consumed and
  // stored in *end) or, when `ends` is empty, the end of the template.
  absl::StatusOr<Body> Subparse(std::initializer_list<absl::string_view> ends, std::string* end) {
    Body body;
    while (true) {
      const Token& tok = Cur();
      if (tok.type == T::kEnd) {
        if (ends.size() == 0) return body;
        return Error(absl::StrCat("unexpected end of template, expected '", *ends.begin(), "'"));
      }
      if (tok.type == T::kData) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kData;
        s->line = tok.line;
        s->text = tok.text;
        body.push_back(std::move(s));
        Next();
        continue;
      }
      if (tok.type == T::kVariableBegin) {
        Next();
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kOutput;
        s->line = tok.line;
        MM_ASSIGN_OR_RETURN(s->expr, ParseTuple(true, {}));
        if (Cur().type != T::kVariableEnd) return Unexpected("end of print statement");
        Next();
        body.push_back(std::move(s));
        continue;
      }
      if (tok.type != T::kBlockBegin) return Unexpected("template data or a tag");
      Next();
      if (Cur().type != T::kName) return Unexpected("a tag name");
      const std::string name = Cur().text;
      if (std::find(ends.begin(), ends.end(), name) != ends.end()) {
        Next();
        *end = name;
        return body;
      }
      MM_ASSIGN_OR_RETURN(StmtPtr s, Statement());
      body.push_back(std::move(s));
    }
  }

  absl::StatusOr<StmtPtr> Statement() {
    const std::string name = Cur().text;
    auto s = std::make_unique<Stmt>();
    s->line = Cur().line;
    Next();
    if (name == "if") return If(std::move(s));
    if (name == "for") return For(std::move(s));
    if (name == "set") return Set(std::move(s));
    if (name == "macro") return Macro(std::move(s));
    if (name == "call") return CallBlock(std::move(s));
    if (name == "filter") return FilterBlock(std::move(s));
    if (name == "with") return With(std::move(s));
    if (name == "generation") {
      s->kind = Stmt::Kind::kScope;
      return Block(std::move(s), "endgeneration");
    }
    if (name == "break" || name == "continue") {
      if (loops_ == 0) return Error(absl::StrCat("'", name, "' outside of a loop"));
      s->kind = name == "break" ? Stmt::Kind::kBreak : Stmt::Kind::kContinue;
      MM_RETURN_IF_ERROR(ExpectBlockEnd());
      return s;
    }
    if (name == "include" || name == "extends" || name == "import" || name == "from" || name == "block") {
      return Error(absl::StrCat("'", name, "' is not supported in chat templates (they are one file)"));
    }
    return Error(absl::StrCat("encountered unknown tag '", name, "'"));
  }

  absl::StatusOr<StmtPtr> Block(StmtPtr s, absl::string_view end_tag) {
    MM_RETURN_IF_ERROR(ExpectBlockEnd());
    std::string end;
    MM_ASSIGN_OR_RETURN(Body body, Subparse({end_tag}, &end));
    s->bodies.push_back(std::move(body));
    MM_RETURN_IF_ERROR(ExpectBlockEnd());
    return s;
  }

  absl::StatusOr<StmtPtr> If(StmtPtr s) {
    s->kind = Stmt::Kind::kIf;
    while (true) {
      MM_ASSIGN_OR_RETURN(ExprPtr cond, ParseTuple(false, {}));
      s->conditions.push_back(std::move(cond));
      MM_RETURN_IF_ERROR(ExpectBlockEnd());
      std::string end;
      MM_ASSIGN_OR_RETURN(Body body, Subparse({"elif", "else", "endif"}, &end));
      s->bodies.push_back(std::move(body));
      if (end == "elif") continue;
      if (end == "else") {
        MM_RETURN_IF_ERROR(ExpectBlockEnd());
        MM_ASSIGN_OR_RETURN(s->else_body, Subparse({"endif"}, &end));
      }
      MM_RETURN_IF_ERROR(ExpectBlockEnd());
      return s;
    }
  }

  // Names to assign: `x`, `a, b`, `(a, b)`.
  absl::StatusOr<std::vector<std::string>> Targets() {
    std::vector<std::string> names;
    const bool paren = SkipOp("(");
    do {
      if (paren && IsOp(")")) break;
      MM_ASSIGN_OR_RETURN(std::string n, ExpectName());
      if (n == "true" || n == "false" || n == "none" || n == "True" || n == "False" || n == "None" || n == "loop") {
        return Error(absl::StrCat("can't assign to '", n, "'"));
      }
      names.push_back(std::move(n));
    } while (SkipOp(","));
    if (paren) MM_RETURN_IF_ERROR(ExpectOp(")"));
    return names;
  }

  absl::StatusOr<StmtPtr> For(StmtPtr s) {
    s->kind = Stmt::Kind::kFor;
    MM_ASSIGN_OR_RETURN(s->targets, Targets());
    if (!SkipName("in")) return Unexpected("'in'");
    MM_ASSIGN_OR_RETURN(s->expr, ParseTuple(false, {"recursive", "if"}));
    if (SkipName("if")) {
      MM_ASSIGN_OR_RETURN(s->condition, ParseTuple(true, {"recursive"}));
    }
    if (SkipName("recursive")) return Error("recursive loops are not supported");
    MM_RETURN_IF_ERROR(ExpectBlockEnd());
    ++loops_;
    std::string end;
    MM_ASSIGN_OR_RETURN(Body body, Subparse({"endfor", "else"}, &end));
    --loops_;
    s->bodies.push_back(std::move(body));
    if (end == "else") {
      MM_RETURN_IF_ERROR(ExpectBlockEnd());
      MM_ASSIGN_OR_RETURN(s->else_body, Subparse({"endfor"}, &end));
    }
    MM_RETURN_IF_ERROR(ExpectBlockEnd());
    return s;
  }

  absl::StatusOr<StmtPtr> Set(StmtPtr s) {
    if (Cur().type == T::kName && Peek().type == T::kOperator && Peek().text == "." && Peek(2).type == T::kName) {
      s->kind = Stmt::Kind::kSet;
      s->targets.push_back(Cur().text);
      s->target_attr = Peek(2).text;
      Next(), Next(), Next();
      MM_RETURN_IF_ERROR(ExpectOp("="));
      MM_ASSIGN_OR_RETURN(s->expr, ParseTuple(true, {}));
      MM_RETURN_IF_ERROR(ExpectBlockEnd());
      return s;
    }
    MM_ASSIGN_OR_RETURN(s->targets, Targets());
    if (SkipOp("=")) {
      s->kind = Stmt::Kind::kSet;
      MM_ASSIGN_OR_RETURN(s->expr, ParseTuple(true, {}));
      MM_RETURN_IF_ERROR(ExpectBlockEnd());
      return s;
    }
    if (s->targets.size() != 1) return Unexpected("'='");
    s->kind = Stmt::Kind::kSetBlock;
    if (SkipOp("|")) {
      MM_ASSIGN_OR_RETURN(s->expr, Filters(nullptr));
    }
    return Block(std::move(s), "endset");
  }

  // `name(a, b=default)`: parameters with optional defaults.
  absl::Status Params(Stmt* s) {
    MM_RETURN_IF_ERROR(ExpectOp("("));
    while (!SkipOp(")")) {
      if (!s->params.empty()) MM_RETURN_IF_ERROR(ExpectOp(","));
      if (SkipOp(")")) break;
      MM_ASSIGN_OR_RETURN(std::string name, ExpectName());
      ExprPtr dflt;
      if (SkipOp("=")) {
        MM_ASSIGN_OR_RETURN(dflt, Expression(true));
      }
      s->params.emplace_back(std::move(name), std::move(dflt));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<StmtPtr> Macro(StmtPtr s) {
    s->kind = Stmt::Kind::kMacro;
    MM_ASSIGN_OR_RETURN(s->name, ExpectName());
    MM_RETURN_IF_ERROR(Params(s.get()));
    const int loops = std::exchange(loops_, 0);
    auto r = Block(std::move(s), "endmacro");
    loops_ = loops;
    return r;
  }

  absl::StatusOr<StmtPtr> CallBlock(StmtPtr s) {
    s->kind = Stmt::Kind::kCallBlock;
    if (IsOp("(")) MM_RETURN_IF_ERROR(Params(s.get()));
    MM_ASSIGN_OR_RETURN(s->expr, Expression(true));
    if (s->expr->kind != Expr::Kind::kCall) return Error("expected a call in a call block");
    const int loops = std::exchange(loops_, 0);
    auto r = Block(std::move(s), "endcall");
    loops_ = loops;
    return r;
  }

  absl::StatusOr<StmtPtr> FilterBlock(StmtPtr s) {
    s->kind = Stmt::Kind::kFilterBlock;
    MM_ASSIGN_OR_RETURN(s->expr, Filters(nullptr, /*first_without_pipe=*/true));
    return Block(std::move(s), "endfilter");
  }

  absl::StatusOr<StmtPtr> With(StmtPtr s) {
    s->kind = Stmt::Kind::kWith;
    while (Cur().type != T::kBlockEnd) {
      if (!s->params.empty()) MM_RETURN_IF_ERROR(ExpectOp(","));
      MM_ASSIGN_OR_RETURN(std::string name, ExpectName());
      MM_RETURN_IF_ERROR(ExpectOp("="));
      MM_ASSIGN_OR_RETURN(ExprPtr value, Expression(true));
      s->params.emplace_back(std::move(name), std::move(value));
    }
    return Block(std::move(s), "endwith");
  }

  // ----------------------------------------------------------- expressions

  bool TupleEnd(std::initializer_list<absl::string_view> extra) const {
    const Token& c = Cur();
    if (c.type == T::kVariableEnd || c.type == T::kBlockEnd || c.type == T::kEnd || (c.type == T::kOperator &&
                                                                                      c.text == ")")) {
      return true;
    }
    return c.type == T::kName && std::find(extra.begin(), extra.end(), c.text) != extra.end();
  }

  // Expressions separated by commas: one, or a tuple of them.
  absl::StatusOr<ExprPtr> ParseTuple(bool with_condexpr, std::initializer_list<absl::string_view> extra_ends,
                                     bool explicit_parentheses = false) {
    const int line = Cur().line;
    std::vector<ExprPtr> items;
    bool comma = false;
    while (true) {
      if (!items.empty()) {
        if (!SkipOp(",")) break;
        comma = true;
      }
      if (TupleEnd(extra_ends)) break;
      MM_ASSIGN_OR_RETURN(ExprPtr e, Expression(with_condexpr));
      items.push_back(std::move(e));
    }
    if (!comma && items.size() == 1) return std::move(items[0]);
    if (items.empty() && !explicit_parentheses) return Unexpected("an expression");
    ExprPtr t = Make(Expr::Kind::kTuple, line);
    t->children = std::move(items);
    return t;
  }

  absl::StatusOr<ExprPtr> Expression(bool with_condexpr) {
    if (++depth_ > kMaxDepth) return Error("expression nested too deeply");
    absl::StatusOr<ExprPtr> r = with_condexpr ? CondExpr() : Or();
    --depth_;
    return r;
  }

  absl::StatusOr<ExprPtr> CondExpr() {
    MM_ASSIGN_OR_RETURN(ExprPtr e, Or());
    while (IsName("if")) {
      const int line = Cur().line;
      Next();
      ExprPtr c = Make(Expr::Kind::kCondition, line);
      MM_ASSIGN_OR_RETURN(ExprPtr cond, Or());
      ExprPtr otherwise;
      if (SkipName("else")) {
        MM_ASSIGN_OR_RETURN(otherwise, CondExpr());
      }
      c->children.push_back(std::move(e));
      c->children.push_back(std::move(cond));
      c->children.push_back(std::move(otherwise));
      e = std::move(c);
    }
    return e;
  }

  absl::StatusOr<ExprPtr> Logical(absl::string_view op, absl::StatusOr<ExprPtr> (Parser::*operand)()) {
    MM_ASSIGN_OR_RETURN(ExprPtr e, (this->*operand)());
    while (IsName(op)) {
      const int line = Cur().line;
      Next();
      MM_ASSIGN_OR_RETURN(ExprPtr r, (this->*operand)());
      ExprPtr b = Make(Expr::Kind::kBinary, line);
      b->name = std::string(op);
      b->children.push_back(std::move(e));
      b->children.push_back(std::move(r));
      e = std::move(b);
    }
    return e;
  }
  absl::StatusOr<ExprPtr> Or() { return Logical("or", &Parser::And); }
  absl::StatusOr<ExprPtr> And() { return Logical("and", &Parser::Not); }

  absl::StatusOr<ExprPtr> Not() {
    if (IsName("not")) {
      const int line = Cur().line;
      Next();
      if (++depth_ > kMaxDepth) return Error("expression nested too deeply");
      MM_ASSIGN_OR_RETURN(ExprPtr operand, Not());
      --depth_;
      ExprPtr e = Make(Expr::Kind::kUnary, line);
      e->name = "not";
      e->children.push_back(std::move(operand));
      return e;
    }
    return CompareExpr();
  }

  absl::StatusOr<ExprPtr> CompareExpr() {
    const int line = Cur().line;
    MM_ASSIGN_OR_RETURN(ExprPtr first, Math1());
    ExprPtr e;
    while (true) {
      std::string op;
      if (Cur().type == T::kOperator &&
          (Cur().text == "==" || Cur().text == "!=" || Cur().text == "<" || Cur().text == "<=" || Cur().text == ">" ||
           Cur().text == ">=")) {
        op = Cur().text;
        Next();
      } else if (IsName("in")) {
        op = "in";
        Next();
      } else if (IsName("not") && Peek().type == T::kName && Peek().text == "in") {
        op = "notin";
        Next(), Next();
      } else {
        break;
      }
      if (e == nullptr) {
        e = Make(Expr::Kind::kCompare, line);
        e->children.push_back(std::move(first));
      }
      MM_ASSIGN_OR_RETURN(ExprPtr right, Math1());
      e->ops.push_back(op);
      e->children.push_back(std::move(right));
    }
    return e != nullptr ? std::move(e) : std::move(first);
  }

  absl::StatusOr<ExprPtr> BinaryLevel(std::initializer_list<absl::string_view> ops,
                                      absl::StatusOr<ExprPtr> (Parser::*operand)()) {
    MM_ASSIGN_OR_RETURN(ExprPtr e, (this->*operand)());
    while (Cur().type == T::kOperator && std::find(ops.begin(), ops.end(), Cur().text) != ops.end()) {
      ExprPtr b = Make(Expr::Kind::kBinary, Cur().line);
      b->name = Cur().text;
      Next();
      MM_ASSIGN_OR_RETURN(ExprPtr r, (this->*operand)());
      b->children.push_back(std::move(e));
      b->children.push_back(std::move(r));
      e = std::move(b);
    }
    return e;
  }
  absl::StatusOr<ExprPtr> Math1() { return BinaryLevel({"+", "-"}, &Parser::Concat); }
  absl::StatusOr<ExprPtr> Concat() { return BinaryLevel({"~"}, &Parser::Math2); }
  absl::StatusOr<ExprPtr> Math2() { return BinaryLevel({"*", "/", "//", "%"}, &Parser::Pow); }
  absl::StatusOr<ExprPtr> Pow() { return BinaryLevel({"**"}, &Parser::UnaryWithFilters); }
  absl::StatusOr<ExprPtr> UnaryWithFilters() { return Unary(true); }

  // `-x` and `+x` bind looser than postfix operators and filters on x, and
  // the filters after them apply to the negation: `-3|abs` is 3.
  absl::StatusOr<ExprPtr> Unary(bool with_filters) {
    if (++depth_ > kMaxDepth) return Error("expression nested too deeply");
    ExprPtr e;
    if (IsOp("-") || IsOp("+")) {
      e = Make(Expr::Kind::kUnary, Cur().line);
      e->name = Cur().text;
      Next();
      MM_ASSIGN_OR_RETURN(ExprPtr operand, Unary(false));
      e->children.push_back(std::move(operand));
    } else {
      MM_ASSIGN_OR_RETURN(e, Primary());
    }
    MM_ASSIGN_OR_RETURN(e, Postfix(std::move(e)));
    if (with_filters) {
      MM_ASSIGN_OR_RETURN(e, FilterExpr(std::move(e)));
    }
    --depth_;
    return e;
  }

  absl::StatusOr<ExprPtr> Primary() {
    const Token& tok = Cur();
    const int line = tok.line;
    ExprPtr e;
    switch (tok.type) {
      case T::kName:
        e = Make(Expr::Kind::kLiteral, line);
        if (tok.text == "true" || tok.text == "True") e->value = Value(true);
        else if (tok.text == "false" || tok.text == "False") e->value = Value(false);
        else if (tok.text == "none" || tok.text == "None") e->value = Value::None();
        else e->kind = Expr::Kind::kName, e->name = tok.text;
        Next();
        return e;
      case T::kString: {
        std::string s;
        while (Cur().type == T::kString) {
          s += Cur().text;
          Next();
        }
        e = Make(Expr::Kind::kLiteral, line);
        e->value = Value(std::move(s));
        return e;
      }
      case T::kInteger: {
        e = Make(Expr::Kind::kLiteral, line);
        errno = 0;
        const long long v = std::strtoll(tok.text.c_str(), nullptr, 10);
        if (errno != 0) return Error("integer literal out of range");
        e->value = Value(static_cast<int64_t>(v));
        Next();
        return e;
      }
      case T::kFloat:
        e = Make(Expr::Kind::kLiteral, line);
        e->value = Value(std::strtod(tok.text.c_str(), nullptr));
        Next();
        return e;
      case T::kOperator:
        if (tok.text == "(") {
          Next();
          MM_ASSIGN_OR_RETURN(e, ParseTuple(true, {}, /*explicit_parentheses=*/true));
          MM_RETURN_IF_ERROR(ExpectOp(")"));
          return e;
        }
        if (tok.text == "[") {
          Next();
          e = Make(Expr::Kind::kList, line);
          while (!SkipOp("]")) {
            if (!e->children.empty()) MM_RETURN_IF_ERROR(ExpectOp(","));
            if (SkipOp("]")) break;
            MM_ASSIGN_OR_RETURN(ExprPtr item, Expression(true));
            e->children.push_back(std::move(item));
          }
          return e;
        }
        if (tok.text == "{") {
          Next();
          e = Make(Expr::Kind::kDict, line);
          while (!SkipOp("}")) {
            if (!e->children.empty()) MM_RETURN_IF_ERROR(ExpectOp(","));
            if (SkipOp("}")) break;
            MM_ASSIGN_OR_RETURN(ExprPtr key, Expression(true));
            MM_RETURN_IF_ERROR(ExpectOp(":"));
            MM_ASSIGN_OR_RETURN(ExprPtr value, Expression(true));
            e->children.push_back(std::move(key));
            e->children.push_back(std::move(value));
          }
          return e;
        }
        break;
      default:
        break;
    }
    return Unexpected("an expression");
  }

  absl::StatusOr<ExprPtr> Postfix(ExprPtr e) {
    while (true) {
      const int line = Cur().line;
      if (SkipOp(".")) {
        if (Cur().type == T::kInteger) {
          ExprPtr item = Make(Expr::Kind::kItem, line);
          ExprPtr key = Make(Expr::Kind::kLiteral, line);
          key->value = Value(static_cast<int64_t>(std::strtoll(Cur().text.c_str(), nullptr, 10)));
          Next();
          item->children.push_back(std::move(e));
          item->children.push_back(std::move(key));
          e = std::move(item);
          continue;
        }
        MM_ASSIGN_OR_RETURN(std::string name, ExpectName());
        ExprPtr attr = Make(Expr::Kind::kAttr, line);
        attr->name = std::move(name);
        attr->children.push_back(std::move(e));
        e = std::move(attr);
      } else if (SkipOp("[")) {
        MM_ASSIGN_OR_RETURN(e, Subscript(std::move(e), line));
      } else if (IsOp("(")) {
        MM_ASSIGN_OR_RETURN(e, Call(std::move(e)));
      } else {
        return e;
      }
    }
  }

  absl::StatusOr<ExprPtr> Subscript(ExprPtr obj, int line) {
    ExprPtr parts[3];
    bool slice = false;
    for (int i = 0; i < 3; ++i) {
      if (!IsOp(":") && !IsOp("]")) {
        MM_ASSIGN_OR_RETURN(parts[i], Expression(true));
      }
      if (i < 2 && SkipOp(":")) {
        slice = true;
        continue;
      }
      break;
    }
    MM_RETURN_IF_ERROR(ExpectOp("]"));
    ExprPtr e = Make(slice ? Expr::Kind::kSlice : Expr::Kind::kItem, line);
    e->children.push_back(std::move(obj));
    if (!slice) {
      if (parts[0] == nullptr) return Error("expected a subscript");
      e->children.push_back(std::move(parts[0]));
    } else {
      for (ExprPtr& p : parts) e->children.push_back(std::move(p));
    }
    return e;
  }

  // `(a, b, k=v)` after a callee, filter or test; fills children and kwargs.
  absl::Status Args(Expr* e) {
    MM_RETURN_IF_ERROR(ExpectOp("("));
    bool first = true;
    while (!SkipOp(")")) {
      if (!first) MM_RETURN_IF_ERROR(ExpectOp(","));
      first = false;
      if (SkipOp(")")) break;
      if (IsOp("*") || IsOp("**")) return Error("*args and **kwargs in calls are not supported");
      if (Cur().type == T::kName && Peek().type == T::kOperator && Peek().text == "=") {
        std::string name = Cur().text;
        Next(), Next();
        MM_ASSIGN_OR_RETURN(ExprPtr v, Expression(true));
        e->kwargs.emplace_back(std::move(name), std::move(v));
        continue;
      }
      if (!e->kwargs.empty()) return Error("positional argument after keyword argument");
      MM_ASSIGN_OR_RETURN(ExprPtr v, Expression(true));
      e->children.push_back(std::move(v));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<ExprPtr> Call(ExprPtr callee) {
    ExprPtr e = Make(Expr::Kind::kCall, Cur().line);
    e->children.push_back(std::move(callee));
    MM_RETURN_IF_ERROR(Args(e.get()));
    return e;
  }

  // `| name(args) | ...`, applied to `operand` (null: a filter block's body).
  absl::StatusOr<ExprPtr> Filters(ExprPtr operand, bool first_without_pipe = false) {
    bool first = first_without_pipe;
    do {
      const int line = Cur().line;
      MM_ASSIGN_OR_RETURN(std::string name, ExpectName());
      ExprPtr f = Make(Expr::Kind::kFilter, line);
      f->filter = FindFilter(name);
      if (f->filter == nullptr) return Error(absl::StrCat("no filter named '", name, "'"));
      f->name = std::move(name);
      f->children.push_back(std::move(operand));
      if (IsOp("(")) MM_RETURN_IF_ERROR(Args(f.get()));
      operand = std::move(f);
      first = false;
    } while (first || SkipOp("|"));
    return operand;
  }

  absl::StatusOr<ExprPtr> FilterExpr(ExprPtr e) {
    while (true) {
      if (SkipOp("|")) {
        MM_ASSIGN_OR_RETURN(e, Filters(std::move(e), /*first_without_pipe=*/true));
      } else if (IsName("is")) {
        const int line = Cur().line;
        Next();
        ExprPtr t = Make(Expr::Kind::kTest, line);
        t->negated = SkipName("not");
        MM_ASSIGN_OR_RETURN(std::string name, ExpectName());
        t->test = FindTest(name);
        if (t->test == nullptr) return Error(absl::StrCat("no test named '", name, "'"));
        t->name = std::move(name);
        t->children.push_back(std::move(e));
        if (IsOp("(")) {
          MM_RETURN_IF_ERROR(Args(t.get()));
        } else if ((Cur().type == T::kName || Cur().type == T::kString || Cur().type == T::kInteger ||
                    Cur().type == T::kFloat || IsOp("[") || IsOp("{")) &&
                   !IsName("else") && !IsName("or") && !IsName("and")) {
          if (IsName("is")) return Error("you cannot chain multiple tests with 'is'");
          MM_ASSIGN_OR_RETURN(ExprPtr arg, Primary());
          MM_ASSIGN_OR_RETURN(arg, Postfix(std::move(arg)));
          t->children.push_back(std::move(arg));
        }
        e = std::move(t);
      } else if (IsOp("(")) {
        MM_ASSIGN_OR_RETURN(e, Call(std::move(e)));
      } else {
        return e;
      }
    }
  }

  const std::vector<Token>& t_;
  size_t pos_ = 0;
  int loops_ = 0;
  int depth_ = 0;
};

}  // namespace

absl::StatusOr<Body> Parse(const std::vector<Token>& tokens) { return Parser(tokens).Run(); }

}  // namespace moemesh::jinja
