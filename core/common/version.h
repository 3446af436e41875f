#ifndef MOEMESH_CORE_COMMON_VERSION_H_
#define MOEMESH_CORE_COMMON_VERSION_H_

#include <string>

namespace moemesh {

// The release of this tree.
inline constexpr char kVersion[] = "0.1.0";

// The commit the build was configured from (12 hex digits), or "unknown":
// CMake reads it with git when it configures; Bazel builds say "unknown".
const char* BuildCommit();

// How this library was compiled: "optimised" or "not optimised"
// (__OPTIMIZE__), then "assertions off" or "assertions on" (NDEBUG), e.g.
// "optimised, assertions off".
std::string BuildType();

// "moemesh 0.1.0 (commit 59f46f0abcde, optimised, assertions off)".
std::string VersionString();

}  // namespace moemesh

#endif  // MOEMESH_CORE_COMMON_VERSION_H_
