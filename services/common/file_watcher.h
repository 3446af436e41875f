#ifndef MOEMESH_SERVICES_COMMON_FILE_WATCHER_H_
#define MOEMESH_SERVICES_COMMON_FILE_WATCHER_H_

#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "absl/time/time.h"

namespace moemesh {

// Calls `on_change` on a thread of its own when the file at `path` changes
// (its modification time or size), looking every `interval`: for settings a
// service takes again without a restart (the gateway's API keys).
class FileWatcher {
 public:
  FileWatcher(std::string path, absl::Duration interval, std::function<void()> on_change);
  // Stops looking; a call of on_change in progress finishes first.
  ~FileWatcher();

 private:
  void Loop();
  const std::string path_;
  const absl::Duration interval_;
  const std::function<void()> on_change_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_COMMON_FILE_WATCHER_H_
