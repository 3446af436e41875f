#include "core/kernels/cpu/linear.h"

#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "core/tensor/thread_pool.h"

namespace moemesh {
namespace {

constexpr int kRowTile = 4;  // weight rows converted and used together

// Converts `n` weights to float (the tile's scratch).
void ToF32Portable(DType t, const void* src, int n, float* dst) { ConvertToF32(t, src, n, dst); }

__attribute__((target("avx2,fma,f16c"))) void ToF32Avx2(DType t, const void* src, int n,
                                                         float* dst) {
  int i = 0;
  if (t == DType::kBF16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (; i + 8 <= n; i += 8) {
      __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
      __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
      _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(w));
    }
    for (; i < n; ++i) dst[i] = Bf16ToF32(s[i]);
  } else if (t == DType::kF16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (; i + 8 <= n; i += 8) {
      __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; ++i) dst[i] = F16ToF32(s[i]);
  } else {
    ConvertToF32(t, src, n, dst);
  }
}

__attribute__((target("avx2,fma"))) inline float HSum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
}

// out[r] = dot(x, w + r*k) for r < rows (rows <= kRowTile), fp32 weights.
__attribute__((target("avx2,fma"))) void DotTileAvx2(const float* x, const float* w, int rows,
                                                     int k, float* out) {
  __m256 acc[kRowTile];
  for (int r = 0; r < kRowTile; ++r) acc[r] = _mm256_setzero_ps();
  int i = 0;
  if (rows == kRowTile) {
    for (; i + 8 <= k; i += 8) {
      __m256 xv = _mm256_loadu_ps(x + i);
      acc[0] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + i), acc[0]);
      acc[1] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + k + i), acc[1]);
      acc[2] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + 2 * k + i), acc[2]);
      acc[3] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + 3 * k + i), acc[3]);
    }
  } else {
    for (; i + 8 <= k; i += 8) {
      __m256 xv = _mm256_loadu_ps(x + i);
      for (int r = 0; r < rows; ++r) {
        acc[r] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + r * k + i), acc[r]);
      }
    }
  }
  for (int r = 0; r < rows; ++r) {
    float s = HSum(acc[r]);
    for (int j = i; j < k; ++j) s += x[j] * w[r * k + j];
    out[r] = s;
  }
}

template <bool kBf16>
__attribute__((target("avx2,fma,f16c"))) inline __m256 Load8(const uint16_t* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if constexpr (kBf16) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return _mm256_cvtph_ps(h);
  }
}

// Like DotTileAvx2 but reads 16-bit weights directly, widening them in
// registers: for the few-row (decode) case this keeps the loop a pure stream
// over the weights without a scratch round trip.
template <bool kBf16>
__attribute__((target("avx2,fma,f16c"))) void DotTile16Avx2(const float* x, const uint16_t* w,
                                                            int rows, int k, float* out) {
  __m256 acc[kRowTile];
  for (int r = 0; r < kRowTile; ++r) acc[r] = _mm256_setzero_ps();
  int i = 0;
  if (rows == kRowTile) {
    for (; i + 8 <= k; i += 8) {
      __m256 xv = _mm256_loadu_ps(x + i);
      acc[0] = _mm256_fmadd_ps(xv, Load8<kBf16>(w + i), acc[0]);
      acc[1] = _mm256_fmadd_ps(xv, Load8<kBf16>(w + k + i), acc[1]);
      acc[2] = _mm256_fmadd_ps(xv, Load8<kBf16>(w + 2 * k + i), acc[2]);
      acc[3] = _mm256_fmadd_ps(xv, Load8<kBf16>(w + 3 * k + i), acc[3]);
    }
  } else {
    for (; i + 8 <= k; i += 8) {
      __m256 xv = _mm256_loadu_ps(x + i);
      for (int r = 0; r < rows; ++r) acc[r] = _mm256_fmadd_ps(xv, Load8<kBf16>(w + r * k + i), acc[r]);
    }
  }
  for (int r = 0; r < rows; ++r) {
    float s = HSum(acc[r]);
    for (int j = i; j < k; ++j) {
      s += x[j] * (kBf16 ? Bf16ToF32(w[r * k + j]) : F16ToF32(w[r * k + j]));
    }
    out[r] = s;
  }
}

// Up to this many input rows read 16-bit weights directly; more rows
// amortise converting the tile to fp32 once.
constexpr int kDirectMaxRows = 4;

void DotTilePortable(const float* x, const float* w, int rows, int k, float* out) {
  for (int r = 0; r < rows; ++r) {
    float s = 0;
    for (int j = 0; j < k; ++j) s += x[j] * w[r * k + j];
    out[r] = s;
  }
}

bool HasAvx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return has;
}

}  // namespace

void Linear(const float* x, int m, const MatrixView& w, const float* bias, float* y,
            ThreadPool* pool) {
  const int n = w.rows, k = w.cols;
  if (m <= 0 || n <= 0) return;
  const bool avx2 = HasAvx2();
  const size_t elem = DTypeSize(w.dtype);
  auto run = [&](int64_t tile_begin, int64_t tile_end) {
    thread_local std::vector<float> scratch;
    if (w.dtype != DType::kF32) scratch.resize(static_cast<size_t>(kRowTile) * k);
    float out[kRowTile];
    for (int64_t t = tile_begin; t < tile_end; ++t) {
      int r0 = static_cast<int>(t * kRowTile);
      int rows = std::min(kRowTile, n - r0);
      const char* src = static_cast<const char*>(w.data) + static_cast<size_t>(r0) * k * elem;
      if (avx2 && w.dtype != DType::kF32 && m <= kDirectMaxRows) {
        const uint16_t* w16 = reinterpret_cast<const uint16_t*>(src);
        for (int i = 0; i < m; ++i) {
          if (w.dtype == DType::kBF16) {
            DotTile16Avx2<true>(x + static_cast<size_t>(i) * k, w16, rows, k, out);
          } else {
            DotTile16Avx2<false>(x + static_cast<size_t>(i) * k, w16, rows, k, out);
          }
          float* yi = y + static_cast<size_t>(i) * n + r0;
          for (int r = 0; r < rows; ++r) yi[r] = bias ? out[r] + bias[r0 + r] : out[r];
        }
        continue;
      }
      const float* wt;
      if (w.dtype == DType::kF32) {
        wt = reinterpret_cast<const float*>(src);
      } else {
        (avx2 ? ToF32Avx2 : ToF32Portable)(w.dtype, src, rows * k, scratch.data());
        wt = scratch.data();
      }
      for (int i = 0; i < m; ++i) {
        (avx2 ? DotTileAvx2 : DotTilePortable)(x + static_cast<size_t>(i) * k, wt, rows, k, out);
        float* yi = y + static_cast<size_t>(i) * n + r0;
        for (int r = 0; r < rows; ++r) yi[r] = bias ? out[r] + bias[r0 + r] : out[r];
      }
    }
  };
  int64_t tiles = (n + kRowTile - 1) / kRowTile;
  // Aim for at least ~64K multiply-adds per chunk so threads pay off.
  int64_t grain = std::max<int64_t>(1, 65536 / (static_cast<int64_t>(k) * kRowTile * m + 1));
  if (pool != nullptr) {
    pool->ParallelFor(tiles, grain, run);
  } else {
    run(0, tiles);
  }
}

void GatherRow(const MatrixView& w, int row, float* out) {
  const char* src = static_cast<const char*>(w.data) +
                    static_cast<size_t>(row) * w.cols * DTypeSize(w.dtype);
  ConvertToF32(w.dtype, src, w.cols, out);
}

}  // namespace moemesh
