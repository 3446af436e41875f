#include "services/gateway/router_pool.h"

#include <grpcpp/grpcpp.h>

#include "services/common/server_util.h"
#include "services/common/tls.h"

namespace moemesh {

RouterPool::RouterPool(const std::vector<std::string>& addresses) : addresses_(addresses), ring_(addresses) {
  for (const std::string& a : addresses_) {
    stubs_.push_back(v1::Router::NewStub(
        grpc::CreateCustomChannel(a, MeshChannelCredentials(), ClientChannelArguments())));
  }
}

std::vector<int> RouterPool::Order(absl::string_view session_id) {
  if (!session_id.empty()) return ring_.Order(session_id);
  std::vector<int> order;
  const int n = size();
  const int first = n == 0 ? 0 : static_cast<int>(next_.fetch_add(1, std::memory_order_relaxed) % n);
  for (int i = 0; i < n; ++i) order.push_back((first + i) % n);
  return order;
}

}  // namespace moemesh
