#ifndef MOEMESH_SERVICES_GATEWAY_ROUTER_POOL_H_
#define MOEMESH_SERVICES_GATEWAY_ROUTER_POOL_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "moemesh/v1/router.grpc.pb.h"
#include "services/gateway/hash_ring.h"

namespace moemesh {

// The routers behind a gateway, one channel each. Thread-safe.
class RouterPool {
 public:
  explicit RouterPool(const std::vector<std::string>& addresses);

  int size() const { return static_cast<int>(stubs_.size()); }
  const std::string& address(int i) const { return addresses_[i]; }
  v1::Router::Stub* stub(int i) const { return stubs_[i].get(); }

  // Routers to try for a request, first choice first. With a session id,
  // the session's home by consistent hashing, then its ring successors;
  // without, round robin.
  std::vector<int> Order(absl::string_view session_id);

 private:
  std::vector<std::string> addresses_;
  std::vector<std::unique_ptr<v1::Router::Stub>> stubs_;
  HashRing ring_;
  std::atomic<uint64_t> next_{0};
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_GATEWAY_ROUTER_POOL_H_
