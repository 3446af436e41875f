#ifndef MOEMESH_CORE_KERNELS_CUDA_CEILINGS_H_
#define MOEMESH_CORE_KERNELS_CUDA_CEILINGS_H_

#include <functional>
#include <vector>

#include "absl/status/statusor.h"

namespace moemesh {

// A GPU under sustained load runs slower than in a burst: an H200 held its
// boost clock for the first ~60 ms of back-to-back GEMMs, then ran them
// 12-16% slower (docs/PERFORMANCE.md). Benchmarks that compare figures
// warm up for this long first, so that all of them are taken in the
// sustained state, the one a busy server is in.
inline constexpr double kSustainedWarmUpSeconds = 0.5;

// Runs `f` back to back, waiting for each run, for at least `seconds`.
absl::Status WarmUpGpu(const std::function<absl::Status()>& f, double seconds);

// The two ceilings GPU benchmarks are measured against, on the machine
// they run on (docs/PERFORMANCE.md), after `warm_up_seconds` of the same
// work (0: a burst):
// bytes per second of a large device-to-device copy, counting bytes read
// plus bytes written;
absl::StatusOr<double> MeasureCopyBandwidth(size_t bytes, double warm_up_seconds = 0);
// FLOP per second of a large bf16 GEMM (fp32 accumulation) through cuBLAS,
// on random data.
absl::StatusOr<double> MeasureBf16GemmFlops(int m, int n, int k, double warm_up_seconds = 0);

// Fills device memory with pseudo-random values in [-0.05, 0.05): bf16
// (`n` elements) or f32. Benchmarks never time zeros (METHOD.md).
absl::Status FillRandomBf16(void* p, size_t n, unsigned seed);
absl::Status FillRandomF32(float* p, size_t n, unsigned seed);

// Median seconds of `f` on the GPU over `iterations` runs after `warmup`,
// timed with CUDA events on the default stream.
absl::StatusOr<double> TimeOnGpu(const std::function<absl::Status()>& f, int warmup, int iterations);
// The same for several ways of doing one thing, one run of each in turn,
// so that all of them see the GPU in the same state (its clocks drift with
// the load before); a median per function.
absl::StatusOr<std::vector<double>> TimeOnGpuInTurn(const std::vector<std::function<absl::Status()>>& fs,
                                                    int warmup, int iterations);

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_CEILINGS_H_
