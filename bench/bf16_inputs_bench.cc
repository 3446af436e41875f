// The CPU's product of BF16 weights by f32 inputs (the default) and by
// bf16-rounded inputs (--bf16-inputs: AVX-512 BF16 where the CPU has it),
// one after the other in the same run, at prefill's shape (256 input rows)
// and decode's (one), for the engine_bench model's expert and attention
// shapes and Mixtral-8x7B's expert: GFLOP/s, the share of the fp32 FMA peak
// measured in the same run (bf16 products can pass 100%: two a lane), and
// the ratio. Issue #22.
//   build/bench/bf16_inputs_bench [--threads 1,2]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "bench/cpu_ceilings.h"
#include "core/kernels/cpu/bf16_inputs.h"
#include "core/kernels/cpu/linear.h"
#include "core/tensor/dtype.h"
#include "core/tensor/thread_pool.h"

namespace moemesh {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int Main(int argc, char** argv) {
  std::vector<int> thread_counts;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    if (f == "--threads" && i + 1 < argc && ParseThreadCounts(argv[i + 1], &thread_counts)) {
      ++i;
      continue;
    }
    std::fprintf(stderr, "usage: bf16_inputs_bench [--threads 1,2]\n");
    return f == "--help" || f == "-h" ? 0 : 2;
  }
  if (thread_counts.empty()) thread_counts = DefaultThreadCounts();
  std::printf("AVX-512 BF16: %s\n",
              HasAvx512Bf16() ? "yes (vdpbf16ps)" : "no (bf16 inputs go through the fp32 kernels)");
  std::printf("%-7s %-32s %9s %8s %9s %8s %7s\n", "threads", "shape m x n x k", "f32 GF/s", "of peak",
              "bf16 GF/s", "of peak", "ratio");
  const std::vector<std::tuple<int, int, int, const char*>> shapes = {
      {256, 1408, 1024, "expert up"},   {256, 1024, 1408, "expert down"}, {256, 1024, 1024, "attention"},
      {256, 14336, 4096, "Mixtral up"}, {1, 14336, 4096, "Mixtral up"}};
  for (int threads : thread_counts) {
    ThreadPool pool(threads);
    const double peak = MeasureFmaPeak(threads).flops;
    for (const auto& [m, n, k, what] : shapes) {
      std::mt19937 rng(7);
      std::normal_distribution<float> d(0, 1);
      std::vector<float> x(static_cast<size_t>(m) * k), y(static_cast<size_t>(m) * n);
      std::vector<uint16_t> w(static_cast<size_t>(n) * k);
      for (float& v : x) v = d(rng);
      for (uint16_t& v : w) v = F32ToBf16(d(rng));
      MatrixView exact{DType::kBF16, n, k, w.data()}, rounded = exact;
      rounded.bf16_inputs = true;
      // Alternately, best of 5 each, so that both see the same machine.
      double best[2] = {1e30, 1e30};
      for (int rep = 0; rep < 6; ++rep) {
        for (int v = 0; v < 2; ++v) {
          const double t0 = Now();
          Linear(x.data(), m, v == 0 ? exact : rounded, nullptr, y.data(), &pool);
          if (rep > 0) best[v] = std::min(best[v], Now() - t0);  // the first warms up
        }
      }
      const double flops = 2.0 * m * n * k;
      const std::string shape = std::to_string(m) + " x " + std::to_string(n) + " x " + std::to_string(k);
      std::printf("%-7d %-32s %9.1f %7.0f%% %9.1f %7.0f%% %6.2fx\n", threads, (shape + " " + what).c_str(),
                  flops / best[0] / 1e9, 100 * flops / best[0] / peak, flops / best[1] / 1e9,
                  100 * flops / best[1] / peak, best[0] / best[1]);
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) { return moemesh::Main(argc, argv); }
