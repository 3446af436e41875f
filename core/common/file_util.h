#ifndef MOEMESH_CORE_COMMON_FILE_UTIL_H_
#define MOEMESH_CORE_COMMON_FILE_UTIL_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moemesh {

// Reads a whole file. NOT_FOUND when it does not exist; the message names
// it. Links are followed (Hugging Face's cache is made of them), but what
// they lead to must be a regular file: a directory, device or FIFO (which
// would never end, or block) is FAILED_PRECONDITION.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// Opens `path` for reading (O_CLOEXEC) only if it is a regular file, as
// ReadFile does; the descriptor is the caller's. *size gets its size.
absl::StatusOr<int> OpenRegularFile(const std::string& path, size_t* size);

// Writes `data` to `path` through a temporary file and a rename, so readers
// never see a partial file.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view data);

// Joins two path components with exactly one '/'.
std::string JoinPath(absl::string_view dir, absl::string_view name);

}  // namespace moemesh

#endif  // MOEMESH_CORE_COMMON_FILE_UTIL_H_
