#ifndef MOEMESH_BENCH_CPU_CEILINGS_H_
#define MOEMESH_BENCH_CPU_CEILINGS_H_

// What this machine's CPU can do at most, measured, for the CPU benchmarks
// to set their figures against (docs/PERFORMANCE.md): the read bandwidth
// that bounds decode and the FMA rate that bounds prefill.

#include <vector>

#include "absl/strings/string_view.h"

namespace moemesh {

// The benchmarks' --threads: "1,2" as counts of 1 or more; false on anything
// else.
bool ParseThreadCounts(absl::string_view list, std::vector<int>* counts);
// Without --threads: 1 and 2, or 1 where the machine has one core.
std::vector<int> DefaultThreadCounts();

// Best-of-5 read bandwidth in bytes/s over a 1 GiB buffer (far larger than
// the caches), `threads` threads each summing its share.
double MeasureReadBandwidth(int threads);

// fp32 FLOP/s of `threads` threads running fused multiply-adds on
// registers alone (many independent accumulators, no memory traffic), in
// the widest instructions the CPU has: AVX-512, AVX2 with FMA, or plain
// scalar code. `isa` names them.
struct FmaPeak {
  double flops = 0;
  const char* isa = "";
};
FmaPeak MeasureFmaPeak(int threads);

}  // namespace moemesh

#endif  // MOEMESH_BENCH_CPU_CEILINGS_H_
