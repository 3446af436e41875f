#include "core/common/version.h"

#include "absl/strings/str_cat.h"

#ifndef MOEMESH_COMMIT
#define MOEMESH_COMMIT "unknown"
#endif

namespace moemesh {

const char* BuildCommit() { return MOEMESH_COMMIT; }

std::string BuildType() {
#ifdef __OPTIMIZE__
  const char* optimised = "optimised";
#else
  const char* optimised = "not optimised";
#endif
#ifdef NDEBUG
  const char* assertions = "assertions off";
#else
  const char* assertions = "assertions on";
#endif
  return absl::StrCat(optimised, ", ", assertions);
}

std::string VersionString() {
  return absl::StrCat("moemesh ", kVersion, " (commit ", BuildCommit(), ", ", BuildType(), ")");
}

}  // namespace moemesh
