#ifndef MOEMESH_CORE_METRICS_PROCESS_COLLECTOR_H_
#define MOEMESH_CORE_METRICS_PROCESS_COLLECTOR_H_

#include <vector>

#include "prometheus/collectable.h"

namespace moemesh {

// The standard process metrics, read from /proc/self at scrape time:
// process_cpu_seconds_total, process_resident_memory_bytes,
// process_virtual_memory_bytes, process_start_time_seconds and
// process_open_fds, as the Go and Python clients name them.
class ProcessCollector : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override;
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_METRICS_PROCESS_COLLECTOR_H_
