#include "core/common/file_util.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace moemesh {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    int err = errno;
    std::string msg = absl::StrCat("cannot open ", path, ": ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(msg) : absl::PermissionDeniedError(msg);
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path));
  return ss.str();
}

absl::Status WriteFileAtomically(const std::string& path, absl::string_view data) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) {
      return absl::PermissionDeniedError(
          absl::StrCat("cannot write ", tmp, ": ", std::strerror(errno)));
    }
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
    out.flush();
    if (!out) return absl::DataLossError(absl::StrCat("error writing ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(
        absl::StrCat("cannot rename ", tmp, " to ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

std::string JoinPath(absl::string_view dir, absl::string_view name) {
  if (dir.empty()) return std::string(name);
  if (dir.back() == '/') return absl::StrCat(dir, name);
  return absl::StrCat(dir, "/", name);
}

absl::StatusOr<std::string> ModelFilePath(absl::string_view dir, absl::string_view name) {
  namespace fs = std::filesystem;
  const std::string path = JoinPath(dir, name);
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(path, ec))) return path;
  const fs::path target = fs::canonical(path, ec);
  if (ec) return path;  // a dangling link: its reader says NOT_FOUND
  const fs::path root = fs::canonical(fs::path(std::string(dir)), ec);
  if (ec) return path;
  auto under = [&target](const fs::path& base) {
    auto [b, t] = std::mismatch(base.begin(), base.end(), target.begin(), target.end());
    return b == base.end();
  };
  if (under(root)) return path;
  // A Hugging Face snapshot's files link to the blobs of its repository.
  if (root.parent_path().filename() == "snapshots" && under(root.parent_path().parent_path() / "blobs")) return path;
  return absl::FailedPreconditionError(absl::StrCat(path, " leads to ", target.string(),
                                                    ", outside the model directory: copy the file into it"));
}

}  // namespace moemesh
