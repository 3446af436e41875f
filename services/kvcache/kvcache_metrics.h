#ifndef MOEMESH_SERVICES_KVCACHE_KVCACHE_METRICS_H_
#define MOEMESH_SERVICES_KVCACHE_KVCACHE_METRICS_H_

#include <map>
#include <mutex>
#include <cstdint>
#include <string>
#include <utility>

#include "services/kvcache/block_store.h"

namespace prometheus {
class Counter;
class Gauge;
class Histogram;
class Registry;
template <typename T>
class Family;
}  // namespace prometheus

namespace moemesh {

// The kvcache service's Prometheus metrics (docs/OBSERVABILITY.md):
//   moemesh_kvcache_rpc_seconds{method, code}   each call
//   moemesh_kvcache_bytes_total{direction}      block bytes in (put) and out (get)
//   moemesh_kvcache_blocks, moemesh_kvcache_block_bytes, moemesh_kvcache_capacity_bytes,
//   moemesh_kvcache_sessions (gauges)
//   moemesh_kvcache_evictions_total, moemesh_kvcache_corrupt_reads_total
// Thread-safe.
class KvCacheMetrics {
 public:
  explicit KvCacheMetrics(prometheus::Registry& registry);

  void ObserveCall(const std::string& method, const std::string& code, double seconds);
  void AddBytes(bool in, double bytes);
  // The store's state after a call.
  void Update(const BlockStore::Stats& stats);

 private:
  prometheus::Family<prometheus::Histogram>* rpc_family_;
  prometheus::Counter* bytes_in_;
  prometheus::Counter* bytes_out_;
  prometheus::Gauge* blocks_;
  prometheus::Gauge* block_bytes_;
  prometheus::Gauge* capacity_;
  prometheus::Gauge* sessions_;
  prometheus::Counter* evictions_;
  prometheus::Counter* corrupt_;
  std::mutex mu_;
  std::map<std::pair<std::string, std::string>, prometheus::Histogram*> rpc_;
  int64_t evictions_seen_ = 0, corrupt_seen_ = 0;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_KVCACHE_KVCACHE_METRICS_H_
