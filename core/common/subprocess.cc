#include "core/common/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

extern char** environ;

namespace moemesh {
namespace {

int DecodeStatus(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

}  // namespace

absl::StatusOr<std::unique_ptr<Subprocess>> Subprocess::Start(const std::vector<std::string>& argv) {
  if (argv.empty()) return absl::InvalidArgumentError("no program to start");
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  // The child starts with default signal handling and an empty mask, even
  // when the parent blocks SIGINT/SIGTERM to take them synchronously.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, dfl;
  sigemptyset(&none);
  sigemptyset(&dfl);
  sigaddset(&dfl, SIGINT);
  sigaddset(&dfl, SIGTERM);
  sigaddset(&dfl, SIGPIPE);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &dfl);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::unique_ptr<Subprocess> p(new Subprocess);
  int rc = posix_spawn(&p->pid_, args[0], &fa, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    p->pid_ = -1;
    return absl::NotFoundError(absl::StrCat("cannot start ", argv[0], ": ", std::strerror(rc)));
  }
  p->out_fd_ = fds[0];
  p->name_ = argv[0].substr(argv[0].find_last_of('/') + 1);
  return p;
}

Subprocess::~Subprocess() {
  Stop();
  if (drain_.joinable()) drain_.join();
  if (out_fd_ >= 0) close(out_fd_);
}

absl::StatusOr<std::string> Subprocess::WaitForLine(absl::string_view prefix, absl::Duration timeout) {
  if (drain_.joinable()) return absl::FailedPreconditionError("the output is being forwarded");
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    size_t nl;
    while ((nl = buffered_.find('\n')) != std::string::npos) {
      lines_.push_back(buffered_.substr(0, nl));
      buffered_.erase(0, nl + 1);
      if (absl::StartsWith(lines_.back(), prefix)) return lines_.back().substr(prefix.size());
    }
    const int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left <= 0) {
      return absl::DeadlineExceededError(
          absl::StrCat(name_, " did not print \"", prefix, "\" within ", absl::FormatDuration(timeout)));
    }
    pollfd pfd{out_fd_, POLLIN, 0};
    int r = poll(&pfd, 1, static_cast<int>(left));
    if (r < 0 && errno != EINTR) return absl::InternalError(absl::StrCat("poll: ", std::strerror(errno)));
    if (r <= 0) continue;
    char buf[4096];
    ssize_t n = read(out_fd_, buf, sizeof buf);
    if (n <= 0) {
      int st = Stop(absl::Seconds(1));
      return absl::UnavailableError(absl::StrCat(name_, " exited (status ", st, ") before it was ready"));
    }
    buffered_.append(buf, static_cast<size_t>(n));
  }
}

void Subprocess::ForwardOutput(int fd) {
  if (drain_.joinable() || out_fd_ < 0) return;
  drain_ = std::thread([in = out_fd_, fd, rest = std::move(buffered_)] {
    if (fd >= 0 && !rest.empty()) (void)!write(fd, rest.data(), rest.size());
    char buf[4096];
    ssize_t n;
    while ((n = read(in, buf, sizeof buf)) > 0) {
      if (fd >= 0) (void)!write(fd, buf, static_cast<size_t>(n));
    }
  });
}

int Subprocess::Poll() {
  if (status_ >= 0 || pid_ < 0) return status_;
  int st;
  if (waitpid(pid_, &st, WNOHANG) == pid_) status_ = DecodeStatus(st);
  return status_;
}

int Subprocess::Stop(absl::Duration grace) {
  if (pid_ < 0 || Poll() >= 0) return status_;
  kill(pid_, SIGTERM);
  const absl::Time deadline = absl::Now() + grace;
  while (absl::Now() < deadline) {
    if (Poll() >= 0) return status_;
    absl::SleepFor(absl::Milliseconds(10));
  }
  kill(pid_, SIGKILL);
  int st;
  if (waitpid(pid_, &st, 0) == pid_) status_ = DecodeStatus(st);
  return status_;
}

std::string ServiceBinaryForTests(const std::string& name, const char* env) {
  if (const char* bin = std::getenv(env)) return bin;
  const char* bin = std::getenv("MOEMESH_BIN");
  const std::string cli = bin ? bin : "build/tools/moemesh/moemesh", suffix = "tools/moemesh/moemesh";
  const std::string root = absl::EndsWith(cli, suffix) ? cli.substr(0, cli.size() - suffix.size()) : "build/";
  return absl::StrCat(root, "services/", name.substr(name.find('-') + 1), "/", name);
}

}  // namespace moemesh
