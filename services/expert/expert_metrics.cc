#include "services/expert/expert_metrics.h"

#include "core/metrics/buckets.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace moemesh {

ExpertMetrics::ExpertMetrics(prometheus::Registry& r) {
  rows_ = &prometheus::BuildHistogram()
               .Name("moemesh_expert_batch_rows")
               .Help("Rows (token x expert assignments) in one expert request.")
               .Register(r)
               .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096,
                                                                16384});
  compute_ = &prometheus::BuildHistogram()
                  .Name("moemesh_expert_compute_seconds")
                  .Help("Time in the expert kernels for one request.")
                  .Register(r)
                  .Add({}, StepBuckets());
  depth_ = &prometheus::BuildGauge()
                .Name("moemesh_expert_queue_depth")
                .Help("Expert requests being served now.")
                .Register(r)
                .Add({});
  requests_ = &prometheus::BuildCounter()
                   .Name("moemesh_expert_requests_total")
                   .Help("Expert requests served.")
                   .Register(r)
                   .Add({});
  errors_ = &prometheus::BuildCounter()
                 .Name("moemesh_expert_request_errors_total")
                 .Help("Expert requests refused (malformed, or for experts this shard does not hold).")
                 .Register(r)
                 .Add({});
}

void ExpertMetrics::ObserveRequest(int rows, double compute_seconds, bool ok) {
  requests_->Increment();
  if (!ok) {
    errors_->Increment();
    return;
  }
  rows_->Observe(rows);
  compute_->Observe(compute_seconds);
}

void ExpertMetrics::SetQueueDepth(int n) { depth_->Set(n); }

}  // namespace moemesh
