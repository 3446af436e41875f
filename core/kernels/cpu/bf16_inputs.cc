#include "core/kernels/cpu/bf16_inputs.h"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include "core/kernels/cpu/for_each_tile.h"
#include "core/tensor/dtype.h"

namespace moemesh {
namespace {

constexpr int kChunk = 32;       // columns a vdpbf16ps takes: 16 lanes of pairs
constexpr int kDirectMaxRows = 4;  // up to this many input rows: a weight row at a time (decode)
constexpr int kRowTile = 4;      // weight rows a decode tile takes
constexpr int kPanelRows = 32;   // weight rows a prefill panel takes (in L2 while input blocks meet it)
constexpr int kMaxMx = 4, kMaxMr = 4;  // prefill's block: 16 accumulators of 32 zmm

// The inputs rounded to bf16, each row padded with zeros to whole chunks
// and starting on a cache line.
struct RoundedInputs {
  std::vector<uint16_t> buf;
  const uint16_t* data = nullptr;
  size_t stride = 0;  // elements a row
  const uint16_t* row(int i) const { return data + static_cast<size_t>(i) * stride; }
};

void RoundInputs(const float* x, int m, int k, RoundedInputs* in) {
  in->stride = static_cast<size_t>(k + kChunk - 1) / kChunk * kChunk;
  in->buf.resize(static_cast<size_t>(m) * in->stride + 32);
  uint16_t* data =
      reinterpret_cast<uint16_t*>((reinterpret_cast<uintptr_t>(in->buf.data()) + 63) & ~uintptr_t{63});
  for (int i = 0; i < m; ++i) {
    uint16_t* row = data + i * in->stride;
    F32ToBf16N(x + static_cast<size_t>(i) * k, k, row);
    std::fill(row + k, row + in->stride, 0);  // the last chunk's padding
  }
  in->data = data;
}

// GCC 12's AVX-512 headers start conversions from _mm512_undefined_*,
// which its -Wuninitialized then reports in every caller.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// Chunk j of a weight row of k columns; the last, partial one masked (the
// inputs' padding is zeros, but what follows a weight row is not its own).
__attribute__((target("avx512f,avx512bw,avx512bf16"), always_inline)) inline __m512bh LoadChunk(
    const uint16_t* w, int j, int k) {
  const int c = j * kChunk;
  if (c + kChunk <= k) return reinterpret_cast<__m512bh>(_mm512_loadu_si512(w + c));
  const __mmask32 mask = (__mmask32{1} << (k - c)) - 1;
  return reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(mask, w + c));
}

__attribute__((target("avx512f,avx512bw,avx512bf16"), always_inline)) inline __m512bh LoadInputs(
    const uint16_t* x, int j) {
  return reinterpret_cast<__m512bh>(_mm512_load_si512(x + j * kChunk));
}

// A (row, weight row)'s sum: its four accumulators added pairwise, then the
// lanes by a fixed tree (lane i + lane i+8, then + i+4, + i+2, + i+1), the
// same in Reduce and ReduceSixteen whatever the compiler's intrinsics do.
__attribute__((target("avx512f"), always_inline)) inline __m512 Vertical(const __m512 (&part)[4]) {
  return _mm512_add_ps(_mm512_add_ps(part[0], part[1]), _mm512_add_ps(part[2], part[3]));
}

__attribute__((target("avx512f"), always_inline)) inline float Reduce(const __m512 (&part)[4]) {
  const __m512 v = Vertical(part);
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), hi);
  const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  const __m128 c = _mm_add_ps(b, _mm_shuffle_ps(b, b, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps(c, c, _MM_SHUFFLE(1, 1, 1, 1))));
}

// Reduce of sixteen sums at once, by the same tree: each level adds the
// halves of two vectors' live lanes into one vector. Sum p ends in lane
// 4 * (p % 4) + p / 4.
__attribute__((target("avx512f"), always_inline)) inline __m512 ReduceSixteen(const __m512 (&v)[16]) {
  __m512 x[8], y[4], z[2];
  for (int j = 0; j < 8; ++j) {  // lanes 0-7: v[2j]'s i + i+8; 8-15: v[2j+1]'s
    x[j] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * j], v[2 * j + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * j], v[2 * j + 1], 0xEE));
  }
  for (int j = 0; j < 4; ++j) {  // quarter k: v[4j + k]'s i + i+4
    y[j] = _mm512_add_ps(_mm512_shuffle_f32x4(x[2 * j], x[2 * j + 1], 0x88),
                         _mm512_shuffle_f32x4(x[2 * j], x[2 * j + 1], 0xDD));
  }
  for (int j = 0; j < 2; ++j) {  // quarter k: v[8j + k]'s i + i+2 twice, then v[8j + 4 + k]'s
    z[j] = _mm512_add_ps(_mm512_shuffle_ps(y[2 * j], y[2 * j + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(y[2 * j], y[2 * j + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(z[0], z[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(z[0], z[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// Decode: MX input rows by one weight row, its four accumulators in one
// pass over the row (a weight matrix is one stream).
template <int MX>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void DotBf16Block(const uint16_t* const* xs,
                                                                         const uint16_t* w, int k, float* out) {
  __m512 acc[MX][4];
  for (int a = 0; a < MX; ++a) {
    for (int q = 0; q < 4; ++q) acc[a][q] = _mm512_setzero_ps();
  }
  const int chunks = (k + kChunk - 1) / kChunk;
  int j = 0;
  for (; j + 4 <= chunks; j += 4) {
    #pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
      const __m512bh wv = LoadChunk(w, j + q, k);
      #pragma GCC unroll 2
      for (int a = 0; a < MX; ++a) acc[a][q] = _mm512_dpbf16_ps(acc[a][q], LoadInputs(xs[a], j + q), wv);
    }
  }
  for (; j < chunks; ++j) {
    const __m512bh wv = LoadChunk(w, j, k);
    for (int a = 0; a < MX; ++a) acc[a][j % 4] = _mm512_dpbf16_ps(acc[a][j % 4], LoadInputs(xs[a], j), wv);
  }
  for (int a = 0; a < MX; ++a) out[a] = Reduce(acc[a]);
}

// Prefill: MX input rows by MR weight rows, one accumulator stream (chunks
// j with j % 4 == q) at a time, so that MX x MR accumulators fit in the
// registers; the same sums as DotBf16Block's, bit for bit.
template <int MX, int MR>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void DotBf16Passes(const uint16_t* const* xs,
                                                                          const uint16_t* const* ws, int k,
                                                                          float* out) {
  const int chunks = (k + kChunk - 1) / kChunk;
  __m512 part[MX][MR][4];
  #pragma GCC unroll 1
  for (int q = 0; q < 4; ++q) {
    __m512 acc[MX][MR];
    #pragma GCC unroll 4
    for (int a = 0; a < MX; ++a) {
      #pragma GCC unroll 4
      for (int b = 0; b < MR; ++b) acc[a][b] = _mm512_setzero_ps();
    }
    for (int j = q; j < chunks; j += 4) {
      __m512bh wv[MR];
      #pragma GCC unroll 4
      for (int b = 0; b < MR; ++b) wv[b] = LoadChunk(ws[b], j, k);
      #pragma GCC unroll 4
      for (int a = 0; a < MX; ++a) {
        const __m512bh xv = LoadInputs(xs[a], j);
        #pragma GCC unroll 4
        for (int b = 0; b < MR; ++b) acc[a][b] = _mm512_dpbf16_ps(acc[a][b], xv, wv[b]);
      }
    }
    #pragma GCC unroll 4
    for (int a = 0; a < MX; ++a) {
      #pragma GCC unroll 4
      for (int b = 0; b < MR; ++b) part[a][b][q] = acc[a][b];
    }
  }
  __m512 sums[16];
  for (int p = 0; p < 16; ++p) sums[p] = p < MX * MR ? Vertical(part[p / MR][p % MR]) : _mm512_setzero_ps();
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, ReduceSixteen(sums));
  for (int p = 0; p < MX * MR; ++p) out[p] = lanes[4 * (p % 4) + p / 4];
}
#pragma GCC diagnostic pop

using PassFn = void (*)(const uint16_t* const*, const uint16_t* const*, int, float*);

template <int... I>
std::array<PassFn, kMaxMx * kMaxMr> MakePasses(std::integer_sequence<int, I...>) {
  return {DotBf16Passes<I / kMaxMr + 1, I % kMaxMr + 1>...};
}

// The bias, where there is one, added to each result.
inline float Biased(const float* bias, int r, float v) { return bias ? v + bias[r] : v; }

void LinearDpbf16(const float* x, int m, const MatrixView& w, const float* bias, float* y, ThreadPool* pool) {
  const int n = w.rows, k = w.cols;
  thread_local RoundedInputs rounded;
  RoundInputs(x, m, k, &rounded);
  // The caller's: a lambda naming the thread_local would see each pool
  // thread's own.
  const RoundedInputs& in = rounded;
  const uint16_t* weights = static_cast<const uint16_t*>(w.data);
  if (m <= kDirectMaxRows) {
    ForEachTile(n, kRowTile, k, m, pool, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int r0 = static_cast<int>(t * kRowTile), rows = std::min(kRowTile, n - r0);
        for (int r = r0; r < r0 + rows; ++r) {
          const uint16_t* wr = weights + static_cast<size_t>(r) * k;
          for (int i = 0; i < m; i += 2) {
            const uint16_t* xs[2] = {in.row(i), in.row(std::min(i + 1, m - 1))};
            float out[2];
            if (i + 1 < m) {
              DotBf16Block<2>(xs, wr, k, out);
            } else {
              DotBf16Block<1>(xs, wr, k, out);
            }
            for (int a = 0; a < std::min(2, m - i); ++a) {
              y[static_cast<size_t>(i + a) * n + r] = Biased(bias, r, out[a]);
            }
          }
        }
      }
    });
    return;
  }
  static const std::array<PassFn, kMaxMx * kMaxMr> passes =
      MakePasses(std::make_integer_sequence<int, kMaxMx * kMaxMr>{});
  ForEachTile(n, kPanelRows, k, m, pool, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int r0 = static_cast<int>(p * kPanelRows), rows = std::min(kPanelRows, n - r0);
      for (int i = 0; i < m; i += kMaxMx) {
        const int bx = std::min(kMaxMx, m - i);
        const uint16_t* xs[kMaxMx];
        for (int a = 0; a < bx; ++a) xs[a] = in.row(i + a);
        for (int r = r0; r < r0 + rows; r += kMaxMr) {
          const int br = std::min(kMaxMr, r0 + rows - r);
          const uint16_t* ws[kMaxMr];
          for (int b = 0; b < br; ++b) ws[b] = weights + static_cast<size_t>(r + b) * k;
          float block[kMaxMx * kMaxMr];
          passes[(bx - 1) * kMaxMr + br - 1](xs, ws, k, block);
          for (int a = 0; a < bx; ++a) {
            for (int b = 0; b < br; ++b) {
              y[static_cast<size_t>(i + a) * n + r + b] = Biased(bias, r + b, block[a * br + b]);
            }
          }
        }
      }
    }
  });
}

}  // namespace

bool HasAvx512Bf16() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512bf16");
  return has;
}

void LinearBf16Inputs(const float* x, int m, const MatrixView& w, const float* bias, float* y, ThreadPool* pool,
                      LinearIsa isa) {
  if (m <= 0 || w.rows <= 0) return;
  if (isa == LinearIsa::kAvx512 && HasAvx512Bf16()) return LinearDpbf16(x, m, w, bias, y, pool);
  thread_local std::vector<float> rounded;
  rounded.resize(static_cast<size_t>(m) * w.cols);
  for (size_t i = 0; i < rounded.size(); ++i) rounded[i] = Bf16ToF32(F32ToBf16(x[i]));
  MatrixView plain = w;
  plain.bf16_inputs = false;
  Linear(rounded.data(), m, plain, bias, y, pool, isa);
}

}  // namespace moemesh
