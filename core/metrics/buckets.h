#ifndef MOEMESH_CORE_METRICS_BUCKETS_H_
#define MOEMESH_CORE_METRICS_BUCKETS_H_

#include <vector>

namespace moemesh {

// Histogram buckets, in seconds, in the spirit of vLLM's: fine at the low end,
// where a healthy CPU or GPU mesh lives, and wide enough at the top for
// overload. Aggregated with histogram_quantile, a quantile is known to
// within its bucket.

// Time to first token.
inline std::vector<double> TtftBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
          0.75,  1.0,    2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0};
}
// Time between two tokens of a stream.
inline std::vector<double> InterTokenBuckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
          0.075,  0.1,   0.15,   0.2,   0.3,    0.4,  0.5,   0.75, 1.0,   2.5,  5.0};
}
// Whole requests, and time waiting for admission.
inline std::vector<double> RequestBuckets() {
  return {0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5,
          5.0,  10.0,  15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0};
}
// Steps and phases of a step, and expert calls.
inline std::vector<double> StepBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025,
          0.05,   0.075,   0.1,    0.25,  0.5,    1.0,   2.5};
}

}  // namespace moemesh

#endif  // MOEMESH_CORE_METRICS_BUCKETS_H_
