#include "services/common/file_watcher.h"

#include <sys/stat.h>

#include <chrono>
#include <utility>

namespace moemesh {
namespace {

// What tells a changed file: modification time and size (-1 when missing).
std::pair<int64_t, int64_t> Stamp(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return {-1, -1};
  return {static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec, static_cast<int64_t>(st.st_size)};
}

}  // namespace

FileWatcher::FileWatcher(std::string path, absl::Duration interval, std::function<void()> on_change)
    : path_(std::move(path)), interval_(interval), on_change_(std::move(on_change)) {
  thread_ = std::thread([this] { Loop(); });
}

FileWatcher::~FileWatcher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void FileWatcher::Loop() {
  auto last = Stamp(path_);
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, absl::ToChronoMilliseconds(interval_), [this] { return stop_; })) {
    const auto now = Stamp(path_);
    if (now == last) continue;
    last = now;
    lock.unlock();
    on_change_();
    lock.lock();
  }
}

}  // namespace moemesh
