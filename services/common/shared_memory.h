#ifndef MOEMESH_SERVICES_COMMON_SHARED_MEMORY_H_
#define MOEMESH_SERVICES_COMMON_SHARED_MEMORY_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moemesh {

// A POSIX shared memory object mapped read-write: one process makes it
// (Create), tells another its name over a channel they already share, and
// that one maps it too (Open); the maker then unlinks the name (Unlink), so
// that nothing is left in /dev/shm when either dies. For a client and a
// service on one host (HostId) and in one IPC namespace, where copying
// bytes through a socket costs more than the work (the kvcache data
// channel). The object is readable by its owner only (mode 0600): a peer
// running as another user cannot open it, and falls back to the socket.
class SharedMemory {
 public:
  // A new object of `bytes` bytes under a fresh name ("/moemesh-...").
  static absl::StatusOr<std::unique_ptr<SharedMemory>> Create(size_t bytes);
  // Maps the object another process made. INVALID_ARGUMENT for a name that
  // is not one Create makes or a size that is not the object's;
  // UNAVAILABLE when it cannot be opened (gone, another user, another
  // IPC namespace).
  static absl::StatusOr<std::unique_ptr<SharedMemory>> Open(absl::string_view name, size_t bytes);
  // Unmaps it (and unlinks the name if this process made it and has not).
  ~SharedMemory();

  // Removes the name; the mappings stay.
  void Unlink();

  const std::string& name() const { return name_; }
  char* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  SharedMemory(std::string name, char* data, size_t size, bool owner)
      : name_(std::move(name)), data_(data), size_(size), linked_(owner) {}
  std::string name_;
  char* data_;
  size_t size_;
  bool linked_;  // made here, and the name not yet removed
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_COMMON_SHARED_MEMORY_H_
