#include "services/kvcache/kvcache_metrics.h"

#include <algorithm>

#include "core/metrics/buckets.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace moemesh {

KvCacheMetrics::KvCacheMetrics(prometheus::Registry& r) {
  rpc_family_ = &prometheus::BuildHistogram()
                     .Name("moemesh_kvcache_rpc_seconds")
                     .Help("Time of a kvcache call, by method and gRPC status code.")
                     .Register(r);
  auto& bytes = prometheus::BuildCounter()
                    .Name("moemesh_kvcache_bytes_total")
                    .Help("Block bytes stored (direction=in) and read back (direction=out).")
                    .Register(r);
  bytes_in_ = &bytes.Add({{"direction", "in"}});
  bytes_out_ = &bytes.Add({{"direction", "out"}});
  auto gauge = [&r](const char* name, const char* help) {
    return &prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
  };
  blocks_ = gauge("moemesh_kvcache_blocks", "Blocks held.");
  block_bytes_ = gauge("moemesh_kvcache_block_bytes", "Bytes the held blocks take (keys and values).");
  capacity_ = gauge("moemesh_kvcache_capacity_bytes", "The bound on block bytes (--capacity-bytes).");
  sessions_ = gauge("moemesh_kvcache_sessions", "Session records held.");
  evictions_ = &prometheus::BuildCounter()
                    .Name("moemesh_kvcache_evictions_total")
                    .Help("Blocks dropped to stay within the capacity, least recently used first.")
                    .Register(r)
                    .Add({});
  corrupt_ = &prometheus::BuildCounter()
                  .Name("moemesh_kvcache_corrupt_reads_total")
                  .Help("Blocks that failed their checksum when read (and were dropped).")
                  .Register(r)
                  .Add({});
}

void KvCacheMetrics::ObserveCall(const std::string& method, const std::string& code, double seconds) {
  prometheus::Histogram* h;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto& slot = rpc_[{method, code}];
    if (slot == nullptr) slot = &rpc_family_->Add({{"method", method}, {"code", code}}, StepBuckets());
    h = slot;
  }
  h->Observe(seconds);
}

void KvCacheMetrics::AddBytes(bool in, double bytes) { (in ? bytes_in_ : bytes_out_)->Increment(bytes); }

void KvCacheMetrics::Update(const BlockStore::Stats& s) {
  blocks_->Set(static_cast<double>(s.blocks));
  block_bytes_->Set(static_cast<double>(s.block_bytes));
  capacity_->Set(static_cast<double>(s.capacity_bytes));
  sessions_->Set(static_cast<double>(s.sessions));
  std::lock_guard<std::mutex> lock(mu_);
  if (s.evictions > evictions_seen_) evictions_->Increment(static_cast<double>(s.evictions - evictions_seen_));
  if (s.corrupt_reads > corrupt_seen_) corrupt_->Increment(static_cast<double>(s.corrupt_reads - corrupt_seen_));
  evictions_seen_ = std::max(evictions_seen_, s.evictions);
  corrupt_seen_ = std::max(corrupt_seen_, s.corrupt_reads);
}

}  // namespace moemesh
