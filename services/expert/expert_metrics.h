#ifndef MOEMESH_SERVICES_EXPERT_EXPERT_METRICS_H_
#define MOEMESH_SERVICES_EXPERT_EXPERT_METRICS_H_

namespace prometheus {
class Counter;
class Gauge;
class Histogram;
class Registry;
}  // namespace prometheus

namespace moemesh {

// An expert worker's Prometheus metrics:
//   moemesh_expert_batch_rows          rows (token x expert assignments) per request
//   moemesh_expert_compute_seconds     time in the expert kernels per request
//   moemesh_expert_queue_depth         requests being served now
//   moemesh_expert_requests_total, moemesh_expert_request_errors_total
// Thread-safe.
class ExpertMetrics {
 public:
  explicit ExpertMetrics(prometheus::Registry& registry);

  void ObserveRequest(int rows, double compute_seconds, bool ok);
  void SetQueueDepth(int n);

 private:
  prometheus::Histogram* rows_;
  prometheus::Histogram* compute_;
  prometheus::Gauge* depth_;
  prometheus::Counter* requests_;
  prometheus::Counter* errors_;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_EXPERT_EXPERT_METRICS_H_
