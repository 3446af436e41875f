#ifndef MOEMESH_SERVICES_GATEWAY_ROUTER_POOL_H_
#define MOEMESH_SERVICES_GATEWAY_ROUTER_POOL_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "moemesh/v1/router.grpc.pb.h"
#include "services/gateway/hash_ring.h"

namespace moemesh {

class AddressSource;

// The routers behind a gateway, one channel each: a fixed list, or those a
// source names (dns:///NAME:PORT, file:PATH: AddressSource), asked again
// every `resolve_period_ms` so that routers come and go while the gateway
// serves. Thread-safe: a request works on the members of the moment
// (Choose), which stay alive while it holds them.
class RouterPool {
 public:
  // The routers of one moment.
  struct Members {
    std::vector<std::string> addresses;
    std::vector<std::shared_ptr<v1::Router::Stub>> stubs;
    HashRing ring;
    explicit Members(const std::vector<std::string>& a) : addresses(a), ring(a) {}
  };
  // Routers to try for a request, first choice first (indices into
  // members): with a session id, the session's home by consistent hashing,
  // then its ring successors; without, round robin.
  struct Choice {
    std::shared_ptr<const Members> members;
    std::vector<int> order;
  };

  // A fixed list of addresses.
  explicit RouterPool(const std::vector<std::string>& addresses);
  // `spec`: --routers, a comma-separated list or one source. UNAVAILABLE
  // when a source names no router now; INVALID_ARGUMENT for a bad spec.
  static absl::StatusOr<std::unique_ptr<RouterPool>> Create(const std::string& spec, int resolve_period_ms);
  ~RouterPool();

  Choice Choose(absl::string_view session_id);
  std::shared_ptr<const Members> members() const;

 private:
  void Set(const std::vector<std::string>& addresses);
  void ResolveLoop(int period_ms);

  mutable absl::Mutex mu_;
  std::shared_ptr<const Members> members_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<uint64_t> next_{0};
  std::unique_ptr<AddressSource> source_;
  std::thread resolver_;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_GATEWAY_ROUTER_POOL_H_
