// The CPU's decode product (Linear with one input row) over expert-sized
// weight matrices, as stored (BF16) and quantized (FP8, int8, int4; int4 also
// by int8 inputs, ":q8"): the bytes
// each form reads per second, beside the machine's read bandwidth measured
// in the same run; issue #17 asks for half of it or more on the quantized
// bytes. The matrices together are far larger than the caches, so each
// product reads its weights from memory, as a decode step does.
//   build/bench/quant_linear_bench [--threads 1,2]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench/cpu_ceilings.h"
#include "core/kernels/cpu/linear.h"
#include "core/quant/quantize.h"
#include "core/tensor/thread_pool.h"

namespace moemesh {
namespace {

// `bf16` as DeepSeek-V3's FP8 checkpoints store weights: E4M3 codes (kept
// in `codes`, a new vector each call) with a scale a 128 x 128 block.
absl::StatusOr<std::shared_ptr<const QuantizedMatrix>> Fp8Matrix(const std::vector<uint16_t>& bf16, int n, int k,
                                                                 std::vector<std::vector<uint8_t>>* codes) {
  const int block = 128, gr = (n + block - 1) / block, gc = (k + block - 1) / block;
  std::vector<float> scales(static_cast<size_t>(gr) * gc, 0.f);
  for (int r = 0; r < n; ++r) {
    for (int c = 0; c < k; ++c) {
      float& s = scales[(r / block) * gc + c / block];
      s = std::max(s, std::fabs(Bf16ToF32(bf16[static_cast<size_t>(r) * k + c])) / 448.0f);
    }
  }
  codes->emplace_back(static_cast<size_t>(n) * k);
  for (int r = 0; r < n; ++r) {
    for (int c = 0; c < k; ++c) {
      const float s = scales[(r / block) * gc + c / block];
      const float w = Bf16ToF32(bf16[static_cast<size_t>(r) * k + c]);
      codes->back()[static_cast<size_t>(r) * k + c] = F32ToF8E4M3(s > 0 ? w / s : 0.f);
    }
  }
  return FromFp8Blocks(n, k, block, block, codes->back().data(), scales.data(), DType::kF32);
}

int Main(int argc, char** argv) {
  std::vector<int> thread_counts;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    if (f == "--threads" && i + 1 < argc) {
      if (!ParseThreadCounts(argv[++i], &thread_counts)) {
        std::fprintf(stderr, "quant_linear_bench: --threads takes counts of 1 or more, such as 1,2\n");
        return 2;
      }
      continue;
    }
    std::fprintf(stderr, "usage: quant_linear_bench [--threads 1,2]\n");
    return f == "--help" || f == "-h" ? 0 : 2;
  }
  if (thread_counts.empty()) thread_counts = DefaultThreadCounts();
  // A Mixtral-8x7B-like expert projection scaled down: 1,408 x 1,024.
  const int n = 1408, k = 1024, count = 96;
  std::mt19937 g(1);
  std::normal_distribution<float> d(0, 0.02f);
  std::vector<uint16_t> bf16(static_cast<size_t>(n) * k);
  for (uint16_t& v : bf16) v = F32ToBf16(d(g));
  std::vector<float> x(k), y(n);
  for (float& v : x) v = d(g);
  std::printf("decode products of %d matrices of %d x %d (input 1 row)\n", count, n, k);
  std::printf("%-8s %-14s %10s %12s %12s %9s\n", "threads", "weights", "MB", "GB/s read", "bandwidth", "of bound");
  for (int threads : thread_counts) {
    const double bandwidth = MeasureReadBandwidth(threads);
    ThreadPool pool(threads);
    for (const char* name : {"bf16", "fp8", "int8", "int4:128", "int4:32:asym", "int4:128:q8", "int4:32:asym:q8"}) {
      std::vector<std::vector<uint16_t>> copies;
      std::vector<std::vector<uint8_t>> fp8_codes;
      std::vector<std::shared_ptr<const QuantizedMatrix>> quantized;
      std::vector<MatrixView> ms;
      for (int c = 0; c < count; ++c) {
        if (std::string(name) == "bf16") {
          copies.push_back(bf16);
          ms.push_back(MatrixView{DType::kBF16, n, k, copies.back().data()});
        } else if (std::string(name) == "fp8") {
          auto q = Fp8Matrix(bf16, n, k, &fp8_codes);
          if (!q.ok()) return 1;
          quantized.push_back(*q);
          ms.push_back((*q)->view());
        } else {
          auto q = Quantize(MatrixView{DType::kBF16, n, k, bf16.data()}, *ParseQuantSpec(name));
          if (!q.ok()) return 1;
          quantized.push_back(*q);
          ms.push_back((*q)->view());
        }
      }
      double best = 1e30;
      for (int rep = 0; rep < 5; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        for (const MatrixView& m : ms) Linear(x.data(), 1, m, nullptr, y.data(), threads > 1 ? &pool : nullptr);
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      const double bytes = static_cast<double>(ms[0].nbytes()) * count;
      std::printf("%-8d %-14s %10.0f %12.1f %12.1f %8.0f%%\n", threads, name, bytes / 1e6, bytes / best / 1e9,
                  bandwidth / 1e9, 100 * bytes / best / bandwidth);
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) { return moemesh::Main(argc, argv); }
