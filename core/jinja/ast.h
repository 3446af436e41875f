#ifndef MOEMESH_CORE_JINJA_AST_H_
#define MOEMESH_CORE_JINJA_AST_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/jinja/builtins.h"
#include "core/jinja/value.h"

namespace moemesh::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

// An expression. Which fields a kind uses:
//   kLiteral   value
//   kName      name
//   kList, kTuple   children (items)
//   kDict      children (key, value, key, value, ...)
//   kAttr      children[0] (object), name
//   kItem      children[0] (object), children[1] (key)
//   kSlice     children[0] (object), children[1..3] (start, stop, step; null where left out)
//   kCall      children[0] (callee), children[1..] (positional), kwargs
//   kFilter    children[0] (operand; null in a filter block), children[1..], kwargs, name, filter
//   kTest      children[0] (operand), children[1..], name, test, negated
//   kUnary     name ("-", "+", "not"), children[0]
//   kBinary    name (operator, "and", "or"), children[0], children[1]
//   kCompare   children[0], then (ops[i], children[i + 1]) in a chain
//   kCondition children[0] (value), children[1] (condition), children[2] (else; may be null)
struct Expr {
  enum class Kind { kLiteral, kName, kList, kTuple, kDict, kAttr, kItem, kSlice, kCall, kFilter, kTest, kUnary,
                    kBinary, kCompare, kCondition };
  Kind kind;
  int line = 0;
  Value value;
  std::string name;
  std::vector<ExprPtr> children;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;
  FilterFn filter = nullptr;
  TestFn test = nullptr;
  bool negated = false;
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

// A statement. Which fields a kind uses:
//   kData      text
//   kOutput    expr
//   kIf        conditions[i] guards bodies[i]; else_body
//   kFor       targets, expr (iterable), condition (may be null), bodies[0], else_body, recursive
//   kSet       targets (several: unpack a tuple) or target_attr (ns.attr), expr
//   kSetBlock  targets[0], bodies[0], expr (a kFilter over the block, may be null)
//   kMacro     name, params (with defaults: may be null), bodies[0]
//   kBreak, kContinue
//   kFilterBlock  expr (a kFilter whose operand is the block), bodies[0]
//   kWith      params (names and values), bodies[0]
//   kScope     bodies[0] (`{% generation %}`: renders its body)
//   kCallBlock expr (a kCall of a macro), params (the caller's), bodies[0] (the caller's body)
struct Stmt {
  enum class Kind { kData, kOutput, kIf, kFor, kSet, kSetBlock, kMacro, kBreak, kContinue, kFilterBlock, kWith,
                    kScope, kCallBlock };
  Kind kind;
  int line = 0;
  std::string text;
  std::string name;
  ExprPtr expr;
  ExprPtr condition;
  std::vector<ExprPtr> conditions;
  std::vector<Body> bodies;
  Body else_body;
  std::vector<std::string> targets;
  std::string target_attr;
  std::vector<std::pair<std::string, ExprPtr>> params;
  bool recursive = false;
};

}  // namespace moemesh::jinja

#endif  // MOEMESH_CORE_JINJA_AST_H_
