#include "services/gateway/router_pool.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "services/common/address_source.h"
#include "services/common/server_util.h"
#include "services/common/tls.h"

namespace moemesh {

RouterPool::RouterPool(const std::vector<std::string>& addresses) { Set(addresses); }

absl::StatusOr<std::unique_ptr<RouterPool>> RouterPool::Create(const std::string& spec, int resolve_period_ms) {
  if (!AddressSource::IsSource(spec)) {
    std::vector<std::string> list;
    for (absl::string_view a : absl::StrSplit(spec, ',', absl::SkipWhitespace())) {
      list.emplace_back(absl::StripAsciiWhitespace(a));
    }
    return std::make_unique<RouterPool>(list);
  }
  absl::StatusOr<std::unique_ptr<AddressSource>> source = AddressSource::Parse(spec);
  if (!source.ok()) return source.status();
  absl::StatusOr<std::vector<std::string>> now = (*source)->Resolve();
  if (!now.ok() || now->empty()) {
    return absl::UnavailableError(absl::StrCat("--routers ", spec, " names no router: ",
                                               now.ok() ? "none listed" : now.status().message()));
  }
  auto pool = std::make_unique<RouterPool>(*now);
  pool->source_ = std::move(*source);
  pool->resolver_ = std::thread([p = pool.get(), resolve_period_ms] { p->ResolveLoop(resolve_period_ms); });
  return pool;
}

RouterPool::~RouterPool() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (resolver_.joinable()) resolver_.join();
}

void RouterPool::Set(const std::vector<std::string>& addresses) {
  std::shared_ptr<const Members> old = members();
  auto m = std::make_shared<Members>(addresses);
  for (const std::string& a : addresses) {
    std::shared_ptr<v1::Router::Stub> stub;
    for (size_t i = 0; old && i < old->addresses.size() && !stub; ++i) {
      if (old->addresses[i] == a) stub = old->stubs[i];  // its channel, and its connection, go on
    }
    if (!stub) {
      stub = v1::Router::NewStub(grpc::CreateCustomChannel(a, MeshChannelCredentials(), ClientChannelArguments()));
    }
    m->stubs.push_back(std::move(stub));
  }
  absl::MutexLock lock(&mu_);
  members_ = std::move(m);
}

void RouterPool::ResolveLoop(int period_ms) {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&stop_), absl::Milliseconds(std::max(1, period_ms)))) return;
    }
    absl::StatusOr<std::vector<std::string>> now = source_->Resolve();
    // A failed or empty answer keeps the routers there are.
    if (now.ok() && !now->empty() && *now != members()->addresses) Set(*now);
  }
}

std::shared_ptr<const RouterPool::Members> RouterPool::members() const {
  absl::MutexLock lock(&mu_);
  return members_;
}

RouterPool::Choice RouterPool::Choose(absl::string_view session_id) {
  Choice c{members(), {}};
  if (!session_id.empty()) {
    c.order = c.members->ring.Order(session_id);
    return c;
  }
  const int n = static_cast<int>(c.members->addresses.size());
  const int first = n == 0 ? 0 : static_cast<int>(next_.fetch_add(1, std::memory_order_relaxed) % n);
  for (int i = 0; i < n; ++i) c.order.push_back((first + i) % n);
  return c;
}

}  // namespace moemesh
