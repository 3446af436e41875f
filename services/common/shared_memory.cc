#include "services/common/shared_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace moemesh {
namespace {

constexpr char kPrefix[] = "/moemesh-";

// Maps `fd` (then closed) read-write, its pages made and mapped now
// rather than at the first touch of each (which would cost a fault a page
// on the data path); null on failure, with errno set.
char* Map(int fd, size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  const int err = errno;
  close(fd);
  errno = err;
  return p == MAP_FAILED ? nullptr : static_cast<char*>(p);
}

}  // namespace

absl::StatusOr<std::unique_ptr<SharedMemory>> SharedMemory::Create(size_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("shared memory of 0 bytes");
  std::random_device seed;
  std::mt19937_64 rng((static_cast<uint64_t>(seed()) << 32) ^ seed() ^ static_cast<uint64_t>(getpid()));
  for (int attempt = 0; attempt < 8; ++attempt) {
    const std::string name = absl::StrCat(kPrefix, getpid(), "-", absl::Hex(rng()));
    const int fd = shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno == EEXIST) continue;
    if (fd < 0) return absl::UnavailableError(absl::StrCat("shm_open ", name, ": ", std::strerror(errno)));
    if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
      const int err = errno;
      close(fd);
      shm_unlink(name.c_str());
      return absl::ResourceExhaustedError(absl::StrCat("sizing ", name, " to ", bytes, " bytes: ", std::strerror(err)));
    }
    char* data = Map(fd, bytes);
    if (data == nullptr) {
      const int err = errno;
      shm_unlink(name.c_str());
      return absl::ResourceExhaustedError(absl::StrCat("mapping ", name, ": ", std::strerror(err)));
    }
    return std::unique_ptr<SharedMemory>(new SharedMemory(name, data, bytes, /*owner=*/true));
  }
  return absl::UnavailableError("no free shared memory name after 8 tries");
}

absl::StatusOr<std::unique_ptr<SharedMemory>> SharedMemory::Open(absl::string_view name, size_t bytes) {
  // Only objects Create makes: a peer must not have this process open any
  // other name (no '/' past the first, no "..").
  if (!absl::StartsWith(name, kPrefix) || name.size() > 64 ||
      name.find_first_not_of("0123456789abcdef-", sizeof(kPrefix) - 1) != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", name.substr(0, 64), "\" is not a moemesh shared memory name (/moemesh-PID-HEX)"));
  }
  if (bytes == 0) return absl::InvalidArgumentError("shared memory of 0 bytes");
  const std::string n(name);
  const int fd = shm_open(n.c_str(), O_RDWR | O_CLOEXEC, 0);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("shm_open ", n, ": ", std::strerror(errno)));
  struct stat st;
  if (fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) != bytes) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(n, " holds ", static_cast<uint64_t>(st.st_size),
                                                   " bytes, not the ", bytes, " announced"));
  }
  char* data = Map(fd, bytes);
  if (data == nullptr) return absl::UnavailableError(absl::StrCat("mapping ", n, ": ", std::strerror(errno)));
  return std::unique_ptr<SharedMemory>(new SharedMemory(n, data, bytes, /*owner=*/false));
}

SharedMemory::~SharedMemory() {
  munmap(data_, size_);
  Unlink();
}

void SharedMemory::Unlink() {
  if (linked_) shm_unlink(name_.c_str());
  linked_ = false;
}

}  // namespace moemesh
