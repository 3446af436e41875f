#ifndef MOEMESH_CORE_COMMON_SUBPROCESS_H_
#define MOEMESH_CORE_COMMON_SUBPROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace moemesh {

// A child process whose stdout is read through a pipe (stderr is
// inherited). Used to start mesh services and wait for their
// "listening on HOST:PORT" line. Not thread-safe.
class Subprocess {
 public:
  // Starts argv[0] (a path) with `argv`.
  static absl::StatusOr<std::unique_ptr<Subprocess>> Start(const std::vector<std::string>& argv);
  // Stops the child if it still runs (SIGTERM, then SIGKILL after 5 s).
  ~Subprocess();

  // Reads stdout until a line starts with `prefix`; returns the rest of
  // that line. DEADLINE_EXCEEDED after `timeout`; UNAVAILABLE when the
  // child closes stdout or exits first.
  absl::StatusOr<std::string> WaitForLine(absl::string_view prefix, absl::Duration timeout);
  // Every line WaitForLine has read, in order.
  const std::vector<std::string>& lines() const { return lines_; }
  // From now on copies the child's stdout to `fd` (-1 discards it), so the
  // child never blocks on a full pipe. WaitForLine may not be called after.
  void ForwardOutput(int fd);

  pid_t pid() const { return pid_; }
  const std::string& name() const { return name_; }
  // Exit status if the child has ended (128 + signal when killed), else -1.
  int Poll();
  // Sends SIGTERM and waits up to `grace`, then SIGKILL. Returns the exit
  // status as Poll does.
  int Stop(absl::Duration grace = absl::Seconds(5));

 private:
  Subprocess() = default;

  pid_t pid_ = -1;
  int out_fd_ = -1;
  int status_ = -1;
  std::string name_;
  std::string buffered_;  // read past the awaited line
  std::vector<std::string> lines_;
  std::thread drain_;
};

// For tests and benchmarks that start a mesh service themselves: the path of
// service `name` ("moemesh-expert"): $MOEMESH_EXPERT_BIN-style override
// `env`, else beside the CLI ($MOEMESH_BIN, default
// build/tools/moemesh/moemesh) in the build tree's layout
// (services/expert/moemesh-expert).
std::string ServiceBinaryForTests(const std::string& name, const char* env);

}  // namespace moemesh

#endif  // MOEMESH_CORE_COMMON_SUBPROCESS_H_
