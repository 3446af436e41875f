#ifndef MOEMESH_CORE_COMMON_STATUS_MACROS_H_
#define MOEMESH_CORE_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Propagates a non-OK absl::Status to the caller.
#define MM_RETURN_IF_ERROR(expr)                  \
  do {                                            \
    ::absl::Status _mm_status = (expr);           \
    if (!_mm_status.ok()) return _mm_status;      \
  } while (0)

#define MM_CONCAT_INNER(a, b) a##b
#define MM_CONCAT(a, b) MM_CONCAT_INNER(a, b)

// `MM_ASSIGN_OR_RETURN(auto x, Foo());` assigns the value of an
// absl::StatusOr or returns its status.
#define MM_ASSIGN_OR_RETURN(lhs, expr) \
  MM_ASSIGN_OR_RETURN_IMPL(MM_CONCAT(_mm_statusor_, __LINE__), lhs, expr)
#define MM_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.status();            \
  lhs = std::move(tmp).value()

#endif  // MOEMESH_CORE_COMMON_STATUS_MACROS_H_
