#include "bench/cpu_ceilings.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "core/tensor/thread_pool.h"

namespace moemesh {

bool ParseThreadCounts(absl::string_view list, std::vector<int>* counts) {
  for (absl::string_view t : absl::StrSplit(list, ',')) {
    int n = 0;
    if (!absl::SimpleAtoi(t, &n) || n < 1) return false;
    counts->push_back(n);
  }
  return true;
}

std::vector<int> DefaultThreadCounts() {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<int> counts;
  for (int t = 1; t <= std::min(2, cores); ++t) counts.push_back(t);
  return counts;
}
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Twelve independent chains hide the FMA latency (4 cycles) on two ports.
constexpr int kChains = 12;
constexpr long kIterations = 1 << 24;

__attribute__((target("avx512f"))) float FmaLoop512(float seed) {
  __m512 acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(seed + c);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (long i = 0; i < kIterations; ++i) {
#pragma GCC unroll 12  // the chains stay in registers
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
  }
  __m512 s = acc[0];
  for (int c = 1; c < kChains; ++c) s = _mm512_add_ps(s, acc[c]);
  float out[16];
  _mm512_storeu_ps(out, s);
  float t = 0;
  for (float v : out) t += v;
  return t;
}

__attribute__((target("avx2,fma"))) float FmaLoop256(float seed) {
  __m256 acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = _mm256_set1_ps(seed + c);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (long i = 0; i < kIterations; ++i) {
#pragma GCC unroll 12
    for (int c = 0; c < kChains; ++c) acc[c] = _mm256_fmadd_ps(acc[c], a, b);
  }
  __m256 s = acc[0];
  for (int c = 1; c < kChains; ++c) s = _mm256_add_ps(s, acc[c]);
  float out[8];
  _mm256_storeu_ps(out, s);
  float t = 0;
  for (float v : out) t += v;
  return t;
}

float FmaLoopScalar(float seed) {
  float acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = seed + c;
  for (long i = 0; i < kIterations; ++i) {
#pragma GCC unroll 12
    for (int c = 0; c < kChains; ++c) acc[c] = acc[c] * 0.999999f + 1e-7f;
  }
  float t = 0;
  for (float v : acc) t += v;
  return t;
}

}  // namespace

double MeasureReadBandwidth(int threads) {
  const size_t n = size_t{1} << 28;  // 1 GiB of floats
  std::unique_ptr<float[]> buf(new float[n]);
  std::memset(buf.get(), 0, n * sizeof(float));
  ThreadPool pool(threads);
  double best = 0;
  std::vector<double> sink(threads * 16);
  for (int rep = 0; rep < 5; ++rep) {
    double t0 = Now();
    pool.ParallelFor(threads, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        size_t lo = n / threads * t, hi = n / threads * (t + 1);
        float a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
        for (size_t i = lo; i < hi; i += 8) {
          a0 += buf[i]; a1 += buf[i + 1]; a2 += buf[i + 2]; a3 += buf[i + 3];
          a4 += buf[i + 4]; a5 += buf[i + 5]; a6 += buf[i + 6]; a7 += buf[i + 7];
        }
        sink[t * 16] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
      }
    });
    double dt = Now() - t0;
    best = std::max(best, n * sizeof(float) / dt);
  }
  return best;
}

FmaPeak MeasureFmaPeak(int threads) {
  FmaPeak peak;
  float (*loop)(float) = FmaLoopScalar;
  int lanes = 1;
  peak.isa = "scalar";
  if (__builtin_cpu_supports("avx512f")) {
    loop = FmaLoop512, lanes = 16, peak.isa = "AVX-512";
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    loop = FmaLoop256, lanes = 8, peak.isa = "AVX2+FMA";
  }
  ThreadPool pool(threads);
  std::vector<float> sink(threads * 16);
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const double t0 = Now();
    pool.ParallelFor(threads, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) sink[t * 16] = loop(static_cast<float>(t));
    });
    const double dt = Now() - t0;
    best = std::max(best, 2.0 * lanes * kChains * static_cast<double>(kIterations) * threads / dt);
  }
  peak.flops = best;
  return peak;
}

}  // namespace moemesh
