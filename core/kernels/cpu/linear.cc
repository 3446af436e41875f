#include "core/kernels/cpu/linear.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "core/kernels/cpu/bf16_inputs.h"
#include "core/kernels/cpu/for_each_tile.h"
#include "core/tensor/thread_pool.h"

namespace moemesh {
namespace {

constexpr int kRowTile = 4;  // weight rows a decode chunk takes together

// Converts `n` weights to float (the tile's scratch).
void ToF32Portable(DType t, const void* src, int n, float* dst) { ConvertToF32(t, src, n, dst); }

__attribute__((target("avx2,fma"))) inline float HSum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
}

// The weights' element types the vector kernels read: floats, 16-bit
// floats, and quantized codes (a QRow stands for a row of those).
enum class W { kF32, kBf16, kF16, kQ8, kQ4, kF8 };

// A quantized row: its codes, its groups' scales and biases, and log2 of
// the columns a group covers (30 for int8's one group a row).
struct QRow {
  const uint8_t* codes;
  const float* scales;
  const float* biases;
  int shift;
};

QRow QRowOf(const MatrixView& w, int row) {
  const size_t g = static_cast<size_t>(row) * w.groups();
  return QRow{static_cast<const uint8_t*>(w.data) + static_cast<size_t>(row) * w.row_bytes(), w.scales + g,
              w.biases + g, w.quant == QuantKind::kInt8 ? 30 : __builtin_ctz(static_cast<unsigned>(w.group))};
}

// Code i of a quantized row (int8 signed, int4 0..15).
template <W kW>
inline int CodeAt(const QRow& r, int i) {
  if constexpr (kW == W::kQ8) return static_cast<int8_t>(r.codes[i]);
  return Int4CodeAt(r.codes, i);
}

// Weight i as the kernels multiply by it: int8's code (its row's scale
// multiplies the sum), int4's code * scale + bias, fused.
template <W kW>
inline float WeightAt(const void* w, int i) {
  if constexpr (kW == W::kF32) return static_cast<const float*>(w)[i];
  if constexpr (kW == W::kBf16) return Bf16ToF32(static_cast<const uint16_t*>(w)[i]);
  if constexpr (kW == W::kF16) return F16ToF32(static_cast<const uint16_t*>(w)[i]);
  const QRow& r = *static_cast<const QRow*>(w);
  if constexpr (kW == W::kQ8) return static_cast<float>(CodeAt<kW>(r, i));
  if constexpr (kW == W::kF8) return F8E4M3ToF32(r.codes[i]) * r.scales[i >> r.shift];
  const int g = i >> r.shift;
  return std::fma(static_cast<float>(CodeAt<kW>(r, i)), r.scales[g], r.biases[g]);
}

// What multiplies a row's sum: int8's scale, else 1.
template <W kW>
inline float RowFactor(const void* w) {
  if constexpr (kW == W::kQ8) return static_cast<const QRow*>(w)->scales[0];
  return 1.0f;
}

// FP8 E4M3 codes as floats in three instructions: the code sign-extended
// and shifted left 20 puts its exponent and mantissa in bits 20..26 and a
// copy of its sign in bit 31 (and 27..30, which the mask clears); that
// float is the code's value times 2^-120 (subnormals too).
constexpr int32_t kF8Bits = static_cast<int32_t>(0x87F00000u);

// Eight weights from element i, widened to float in registers (quantized:
// i a multiple of 8; WeightAt's floats).
template <W kW>
__attribute__((target("avx2,fma,f16c"))) inline __m256 Load8(const void* w, int i) {
  if constexpr (kW == W::kF32) return _mm256_loadu_ps(static_cast<const float*>(w) + i);
  if constexpr (kW == W::kQ8) {
    const QRow& r = *static_cast<const QRow*>(w);
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(r.codes + i))));
  }
  if constexpr (kW == W::kF8) {  // F8E4M3ToF32's bit placement, eight at a time, then the block's scale
    const QRow& r = *static_cast<const QRow*>(w);
    const __m256i b = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(r.codes + i)));
    const __m256i bits = _mm256_and_si256(_mm256_slli_epi32(b, 20), _mm256_set1_epi32(kF8Bits));
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_castsi256_ps(bits), _mm256_set1_ps(0x1p120f)),
                         _mm256_set1_ps(r.scales[i >> r.shift]));
  }
  if constexpr (kW == W::kQ4) {
    const QRow& r = *static_cast<const QRow*>(w);
    __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(r.codes + (i >> 5) * 16 + (i & 15))));
    c = (i & 16) ? _mm256_srli_epi32(c, 4) : _mm256_and_si256(c, _mm256_set1_epi32(15));
    const int g = i >> r.shift;
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(c), _mm256_set1_ps(r.scales[g]), _mm256_set1_ps(r.biases[g]));
  }
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + i));
  if constexpr (kW == W::kBf16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  return _mm256_cvtph_ps(h);
}

// Weights i .. i + 31 as four vectors (i a multiple of 32): an int4 block
// is read and widened once for all four.
template <W kW>
__attribute__((target("avx2,fma,f16c"))) inline void Load32(const void* w, int i, __m256 (&v)[4]) {
  if constexpr (kW == W::kQ4) {
    const QRow& r = *static_cast<const QRow*>(w);
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(r.codes + (i >> 5) * 16));
    const __m256i lo = _mm256_cvtepu8_epi32(bytes), hi = _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(bytes, bytes));
    const __m256i mask = _mm256_set1_epi32(15);
    const int g = i >> r.shift;
    const __m256 scale = _mm256_set1_ps(r.scales[g]), bias = _mm256_set1_ps(r.biases[g]);
    v[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(lo, mask)), scale, bias);
    v[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(hi, mask)), scale, bias);
    v[2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(lo, 4)), scale, bias);
    v[3] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(hi, 4)), scale, bias);
  } else {
    for (int q = 0; q < 4; ++q) v[q] = Load8<kW>(w, i + 8 * q);
  }
}

// out[a * MR + b] = dot(xs[a], ws[b]) over k weights of each of MR rows,
// widened in registers, for MX input rows: each sum in one order whatever
// MX and MR are (four accumulators, each taking every fourth vector of
// the row, the leftover vectors into the first, added pairwise, then the
// scalar tail), so results do not depend on how rows are batched or
// blocked, nor on whether a row was converted to float first. Blocks of
// several rows reuse each load (prefill); one row at a time reads a weight
// matrix start to end, one sequential stream the hardware prefetchers
// follow (decode: four rows read side by side were four short streams,
// and decode ran at 0.4 of the read bandwidth).
template <W kW, int MX, int MR>
__attribute__((target("avx2,fma,f16c"))) void DotBlockAvx2(const float* const* xs, const void* const* ws, int k,
                                                           float* out) {
  __m256 acc[MX][MR][4];
  #pragma GCC unroll 4
  for (int a = 0; a < MX; ++a) {
    #pragma GCC unroll 4
    for (int b = 0; b < MR; ++b) {
      #pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) acc[a][b][q] = _mm256_setzero_ps();
    }
  }
  int i = 0;
  for (; i + 32 <= k; i += 32) {
    __m256 wv[MR][4];
    #pragma GCC unroll 4
    for (int b = 0; b < MR; ++b) Load32<kW>(ws[b], i, wv[b]);
    #pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
      #pragma GCC unroll 4
      for (int a = 0; a < MX; ++a) {
        const __m256 xv = _mm256_loadu_ps(xs[a] + i + 8 * q);
        #pragma GCC unroll 4
        for (int b = 0; b < MR; ++b) acc[a][b][q] = _mm256_fmadd_ps(xv, wv[b][q], acc[a][b][q]);
      }
    }
  }
  for (; i + 8 <= k; i += 8) {
    #pragma GCC unroll 4
    for (int a = 0; a < MX; ++a) {
      const __m256 xv = _mm256_loadu_ps(xs[a] + i);
      #pragma GCC unroll 4
      for (int b = 0; b < MR; ++b) acc[a][b][0] = _mm256_fmadd_ps(xv, Load8<kW>(ws[b], i), acc[a][b][0]);
    }
  }
  #pragma GCC unroll 4
  for (int a = 0; a < MX; ++a) {
    #pragma GCC unroll 4
    for (int b = 0; b < MR; ++b) {
      float s = HSum(_mm256_add_ps(_mm256_add_ps(acc[a][b][0], acc[a][b][1]),
                                   _mm256_add_ps(acc[a][b][2], acc[a][b][3])));
      for (int j = i; j < k; ++j) s += xs[a][j] * WeightAt<kW>(ws[b], j);
      out[a * MR + b] = kW == W::kQ8 ? s * RowFactor<kW>(ws[b]) : s;
    }
  }
}

// GCC 12's AVX-512 headers start conversions from _mm512_undefined_*,
// which its -Wuninitialized then reports in every caller.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
template <W kW>
__attribute__((target("avx512f"))) inline __m512 Load16(const void* w, int i) {
  if constexpr (kW == W::kF32) return _mm512_loadu_ps(static_cast<const float*>(w) + i);
  if constexpr (kW == W::kQ8) {
    const QRow& r = *static_cast<const QRow*>(w);
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r.codes + i))));
  }
  if constexpr (kW == W::kF8) {  // as Load8
    const QRow& r = *static_cast<const QRow*>(w);
    const __m512i b = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r.codes + i)));
    const __m512i bits = _mm512_and_si512(_mm512_slli_epi32(b, 20), _mm512_set1_epi32(kF8Bits));
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_castsi512_ps(bits), _mm512_set1_ps(0x1p120f)),
                         _mm512_set1_ps(r.scales[i >> r.shift]));
  }
  if constexpr (kW == W::kQ4) {  // i a multiple of 16: a block's low or high nibbles
    const QRow& r = *static_cast<const QRow*>(w);
    __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r.codes + (i >> 5) * 16)));
    c = (i & 16) ? _mm512_srli_epi32(c, 4) : _mm512_and_si512(c, _mm512_set1_epi32(15));
    const int g = i >> r.shift;
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(c), _mm512_set1_ps(r.scales[g]), _mm512_set1_ps(r.biases[g]));
  }
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(w) + i));
  if constexpr (kW == W::kBf16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  return _mm512_cvtph_ps(h);
}

// Weights i .. i + 63 as four vectors (i a multiple of 64): each int4
// block is read and widened once for its two vectors.
template <W kW>
__attribute__((target("avx512f"))) inline void Load64(const void* w, int i, __m512 (&v)[4]) {
  if constexpr (kW == W::kQ4) {
    const QRow& r = *static_cast<const QRow*>(w);
    const __m512i mask = _mm512_set1_epi32(15);
    #pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const int at = i + 32 * h, g = at >> r.shift;
      const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r.codes + (at >> 5) * 16)));
      const __m512 scale = _mm512_set1_ps(r.scales[g]), bias = _mm512_set1_ps(r.biases[g]);
      v[2 * h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(c, mask)), scale, bias);
      v[2 * h + 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(c, 4)), scale, bias);
    }
  } else {
    #pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) v[q] = Load16<kW>(w, i + 16 * q);
  }
}

// DotBlockAvx2 in 16 lanes.
template <W kW, int MX, int MR>
__attribute__((target("avx512f"))) void DotBlockAvx512(const float* const* xs, const void* const* ws, int k,
                                                       float* out) {
  __m512 acc[MX][MR][4];
  #pragma GCC unroll 4
  for (int a = 0; a < MX; ++a) {
    #pragma GCC unroll 4
    for (int b = 0; b < MR; ++b) {
      #pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) acc[a][b][q] = _mm512_setzero_ps();
    }
  }
  int i = 0;
  for (; i + 64 <= k; i += 64) {
    __m512 wv[MR][4];
    #pragma GCC unroll 4
    for (int b = 0; b < MR; ++b) Load64<kW>(ws[b], i, wv[b]);
    #pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
      #pragma GCC unroll 4
      for (int a = 0; a < MX; ++a) {
        const __m512 xv = _mm512_loadu_ps(xs[a] + i + 16 * q);
        #pragma GCC unroll 4
        for (int b = 0; b < MR; ++b) acc[a][b][q] = _mm512_fmadd_ps(xv, wv[b][q], acc[a][b][q]);
      }
    }
  }
  for (; i + 16 <= k; i += 16) {
    #pragma GCC unroll 4
    for (int a = 0; a < MX; ++a) {
      const __m512 xv = _mm512_loadu_ps(xs[a] + i);
      #pragma GCC unroll 4
      for (int b = 0; b < MR; ++b) acc[a][b][0] = _mm512_fmadd_ps(xv, Load16<kW>(ws[b], i), acc[a][b][0]);
    }
  }
  #pragma GCC unroll 4
  for (int a = 0; a < MX; ++a) {
    #pragma GCC unroll 4
    for (int b = 0; b < MR; ++b) {
      float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[a][b][0], acc[a][b][1]),
                                                   _mm512_add_ps(acc[a][b][2], acc[a][b][3])));
      for (int j = i; j < k; ++j) s += xs[a][j] * WeightAt<kW>(ws[b], j);
      out[a * MR + b] = kW == W::kQ8 ? s * RowFactor<kW>(ws[b]) : s;
    }
  }
}

// One vector of each row into the MX x MR accumulators (a pass's step),
// the weights widened in registers.
template <W kW, int MX, int MR>
__attribute__((target("avx512f"), always_inline)) inline void PassStep512(const float* const* xs,
                                                                          const void* const* ws, int i,
                                                                          __m512 (&acc)[MX][MR]) {
  __m512 wv[MR];
  #pragma GCC unroll 8
  for (int b = 0; b < MR; ++b) wv[b] = Load16<kW>(ws[b], i);
  #pragma GCC unroll 8
  for (int a = 0; a < MX; ++a) {
    const __m512 xv = _mm512_loadu_ps(xs[a] + i);
    #pragma GCC unroll 8
    for (int b = 0; b < MR; ++b) acc[a][b] = _mm512_fmadd_ps(xv, wv[b], acc[a][b]);
  }
}

// Prefill's block: out[a * MR + b] = dot(xs[a], ws[b]) for MX input rows
// and MR weight rows, each sum in DotBlockAvx512's order, bit for bit (so a
// row's result does not depend on its batch), but one of its four
// accumulator streams at a time: MX x MR accumulators fit in the registers
// where MX x MR x 4 did not, and each load feeds MX or MR products instead
// of two. A pass reads every fourth 64-byte line of rows that stay in L1.
// 16-bit weights are widened in registers, not converted to a float copy
// first (15% faster: half the bytes from L2, no copy to write).
template <W kW, int MX, int MR>
__attribute__((target("avx512f"))) void DotPassesAvx512(const float* const* xs, const void* const* ws, int k,
                                                        float* out) {
  const int full = k / 64 * 64;
  __m512 part[4][MX][MR];
  #pragma GCC unroll 1
  for (int q = 0; q < 4; ++q) {
    __m512 acc[MX][MR];
    #pragma GCC unroll 8
    for (int a = 0; a < MX; ++a) {
      #pragma GCC unroll 8
      for (int b = 0; b < MR; ++b) acc[a][b] = _mm512_setzero_ps();
    }
    for (int i = 16 * q; i < full; i += 64) PassStep512<kW, MX, MR>(xs, ws, i, acc);
    if (q == 0) {
      for (int i = full; i + 16 <= k; i += 16) PassStep512<kW, MX, MR>(xs, ws, i, acc);  // the leftover vectors, as DotBlockAvx512
    }
    #pragma GCC unroll 8
    for (int a = 0; a < MX; ++a) {
      #pragma GCC unroll 8
      for (int b = 0; b < MR; ++b) part[q][a][b] = acc[a][b];
    }
  }
  const int tail = full + (k - full) / 16 * 16;
  for (int a = 0; a < MX; ++a) {
    for (int b = 0; b < MR; ++b) {
      float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(part[0][a][b], part[1][a][b]),
                                                   _mm512_add_ps(part[2][a][b], part[3][a][b])));
      for (int j = tail; j < k; ++j) s += xs[a][j] * WeightAt<kW>(ws[b], j);
      out[a * MR + b] = s;
    }
  }
}
#pragma GCC diagnostic pop

// PassStep512 in 8 lanes.
template <W kW, int MX, int MR>
__attribute__((target("avx2,fma,f16c"), always_inline)) inline void PassStep256(const float* const* xs,
                                                                                const void* const* ws, int i,
                                                                                __m256 (&acc)[MX][MR]) {
  __m256 wv[MR];
  #pragma GCC unroll 8
  for (int b = 0; b < MR; ++b) wv[b] = Load8<kW>(ws[b], i);
  #pragma GCC unroll 8
  for (int a = 0; a < MX; ++a) {
    const __m256 xv = _mm256_loadu_ps(xs[a] + i);
    #pragma GCC unroll 8
    for (int b = 0; b < MR; ++b) acc[a][b] = _mm256_fmadd_ps(xv, wv[b], acc[a][b]);
  }
}

// DotPassesAvx512 in 8 lanes, in DotBlockAvx2's order.
template <W kW, int MX, int MR>
__attribute__((target("avx2,fma,f16c"))) void DotPassesAvx2(const float* const* xs, const void* const* ws, int k,
                                                            float* out) {
  const int full = k / 32 * 32;
  __m256 part[4][MX][MR];
  #pragma GCC unroll 1
  for (int q = 0; q < 4; ++q) {
    __m256 acc[MX][MR];
    #pragma GCC unroll 8
    for (int a = 0; a < MX; ++a) {
      #pragma GCC unroll 8
      for (int b = 0; b < MR; ++b) acc[a][b] = _mm256_setzero_ps();
    }
    for (int i = 8 * q; i < full; i += 32) PassStep256<kW, MX, MR>(xs, ws, i, acc);
    if (q == 0) {
      for (int i = full; i + 8 <= k; i += 8) PassStep256<kW, MX, MR>(xs, ws, i, acc);
    }
    #pragma GCC unroll 8
    for (int a = 0; a < MX; ++a) {
      #pragma GCC unroll 8
      for (int b = 0; b < MR; ++b) part[q][a][b] = acc[a][b];
    }
  }
  const int tail = full + (k - full) / 8 * 8;
  for (int a = 0; a < MX; ++a) {
    for (int b = 0; b < MR; ++b) {
      float s = HSum(_mm256_add_ps(_mm256_add_ps(part[0][a][b], part[1][a][b]),
                                   _mm256_add_ps(part[2][a][b], part[3][a][b])));
      for (int j = tail; j < k; ++j) s += xs[a][j] * WeightAt<kW>(ws[b], j);
      out[a * MR + b] = s;
    }
  }
}

using BlockFn = void (*)(const float* const*, const void* const*, int, float*);

// Decode's kernels of one instruction set and weight type, by the number of
// input rows a call takes (fn[MX - 1]), a weight row at a time.
struct Blocks {
  BlockFn fn[2];
};

template <W kW>
Blocks BlocksOf(bool avx512) {
  if (avx512) return {{DotBlockAvx512<kW, 1, 1>, DotBlockAvx512<kW, 2, 1>}};
  return {{DotBlockAvx2<kW, 1, 1>, DotBlockAvx2<kW, 1, 1>}};  // mx is 1 (16 ymm registers)
}

Blocks BlocksFor(LinearIsa isa, const MatrixView& w) {
  const bool wide = isa == LinearIsa::kAvx512;
  const DType t = w.dtype;
  if (w.quant == QuantKind::kInt8) return BlocksOf<W::kQ8>(wide);
  if (w.quant == QuantKind::kInt4) return BlocksOf<W::kQ4>(wide);
  if (w.quant == QuantKind::kFp8) return BlocksOf<W::kF8>(wide);
  if (t == DType::kBF16) return BlocksOf<W::kBf16>(wide);
  if (t == DType::kF16) return BlocksOf<W::kF16>(wide);
  return BlocksOf<W::kF32>(wide);
}

// Prefill's pass kernels by block shape ([MX - 1][MR - 1]), and the largest
// block the instruction set's registers hold: 4 x 4 accumulators in 32 zmm,
// 2 x 4 in 16 ymm.
constexpr int kPassMaxMx = 4, kPassMaxMr = 4;
struct PassBlocks {
  BlockFn fn[kPassMaxMx][kPassMaxMr];
  int mx, mr;
};

template <W kW, int... I>
PassBlocks MakePassBlocks(bool avx512, std::integer_sequence<int, I...>) {
  PassBlocks p{};
  if (avx512) {
    ((p.fn[I / kPassMaxMr][I % kPassMaxMr] = DotPassesAvx512<kW, I / kPassMaxMr + 1, I % kPassMaxMr + 1>), ...);
    p.mx = 4;
  } else {  // two input rows at most
    ((p.fn[I / kPassMaxMr][I % kPassMaxMr] = DotPassesAvx2<kW, std::min(2, I / kPassMaxMr + 1), I % kPassMaxMr + 1>),
     ...);
    p.mx = 2;
  }
  p.mr = 4;
  return p;
}

template <W kW>
const PassBlocks& PassBlocksOf(bool avx512) {
  static const PassBlocks wide = MakePassBlocks<kW>(true, std::make_integer_sequence<int, kPassMaxMx * kPassMaxMr>{});
  static const PassBlocks narrow =
      MakePassBlocks<kW>(false, std::make_integer_sequence<int, kPassMaxMx * kPassMaxMr>{});
  return avx512 ? wide : narrow;
}

const PassBlocks& PassBlocksFor(LinearIsa isa, DType t) {
  const bool wide = isa == LinearIsa::kAvx512;
  if (t == DType::kBF16) return PassBlocksOf<W::kBf16>(wide);
  if (t == DType::kF16) return PassBlocksOf<W::kF16>(wide);
  return PassBlocksOf<W::kF32>(wide);
}

// Weight rows taken together in prefill: a block of input rows meets the
// whole panel while it stays in L1 (the panel in L2).
constexpr int kPanelRows = 16;

// `n` floats of `v`, 64-byte aligned: a vector load that straddles two
// cache lines costs two, and prefill ran 15-25% slower for it.
float* AlignedFloats(std::vector<float>& v, size_t n) {
  v.resize(n + 16);
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(v.data()) + 63) & ~uintptr_t{63});
}

// Row `row` of a quantized matrix as the kernels multiply by it
// (WeightAt's floats: int8's codes, int4's weights), and what multiplies
// the row's sums (int8's scale, else 1).
template <W kW>
float WidenRowOf(const MatrixView& w, int row, float* out) {
  const QRow r = QRowOf(w, row);
  for (int c = 0; c < w.cols; ++c) out[c] = WeightAt<kW>(&r, c);
  return RowFactor<kW>(&r);
}

// The same, eight at a time (prefill widens every row it multiplies).
template <W kW>
__attribute__((target("avx2,fma,f16c"))) float WidenRowAvx2(const MatrixView& w, int row, float* out) {
  const QRow r = QRowOf(w, row);
  int c = 0;
  for (; c + 8 <= w.cols; c += 8) _mm256_storeu_ps(out + c, Load8<kW>(&r, c));
  for (; c < w.cols; ++c) out[c] = WeightAt<kW>(&r, c);
  return RowFactor<kW>(&r);
}

float WidenRow(const MatrixView& w, int row, float* out) {
  const bool avx2 = BestLinearIsa() != LinearIsa::kPortable;
  if (w.quant == QuantKind::kInt8) return avx2 ? WidenRowAvx2<W::kQ8>(w, row, out) : WidenRowOf<W::kQ8>(w, row, out);
  if (w.quant == QuantKind::kFp8) return avx2 ? WidenRowAvx2<W::kF8>(w, row, out) : WidenRowOf<W::kF8>(w, row, out);
  return avx2 ? WidenRowAvx2<W::kQ4>(w, row, out) : WidenRowOf<W::kQ4>(w, row, out);
}

// Linear for more than kDirectMaxRows input rows with vector kernels.
void LinearWide(const float* x, int m, const MatrixView& w, const float* bias, float* y, ThreadPool* pool,
                LinearIsa isa) {
  const int n = w.rows, k = w.cols;
  // Quantized weights are widened to a float panel first (decode widens
  // them in registers; the floats are the same).
  const PassBlocks& kernels = PassBlocksFor(isa, w.quantized() ? DType::kF32 : w.dtype);
  const size_t row_bytes = w.row_bytes();
  // Input rows start on cache lines (a copy where they do not, once: each
  // row meets every weight row).
  size_t x_stride = k;
  if ((reinterpret_cast<uintptr_t>(x) | k * sizeof(float)) % 64 != 0 && n >= kPanelRows) {
    thread_local std::vector<float> aligned_x;
    x_stride = (static_cast<size_t>(k) + 15) / 16 * 16;
    float* copy = AlignedFloats(aligned_x, m * x_stride);
    for (int i = 0; i < m; ++i) std::copy_n(x + static_cast<size_t>(i) * k, k, copy + i * x_stride);
    x = copy;
  }
  auto run = [&](int64_t panel_begin, int64_t panel_end) {
    thread_local std::vector<float> scratch;
    float* widened = w.quantized() ? AlignedFloats(scratch, static_cast<size_t>(kPanelRows) * k) : nullptr;
    for (int64_t p = panel_begin; p < panel_end; ++p) {
      const int r0 = static_cast<int>(p * kPanelRows);
      const int rows = std::min(kPanelRows, n - r0);
      const char* panel = static_cast<const char*>(w.data) + static_cast<size_t>(r0) * row_bytes;
      size_t stride = row_bytes;
      float factor[kPanelRows];
      std::fill_n(factor, kPanelRows, 1.0f);
      if (widened != nullptr) {
        for (int r = 0; r < rows; ++r) factor[r] = WidenRow(w, r0 + r, widened + static_cast<size_t>(r) * k);
        panel = reinterpret_cast<const char*>(widened);
        stride = static_cast<size_t>(k) * sizeof(float);
      }
      for (int i = 0; i < m; i += kernels.mx) {
        const int bx = std::min(kernels.mx, m - i);
        const float* xs[kPassMaxMx];
        for (int a = 0; a < bx; ++a) xs[a] = x + (i + a) * x_stride;
        for (int r = 0; r < rows; r += kernels.mr) {
          const int br = std::min(kernels.mr, rows - r);
          const void* ws[kPassMaxMr];
          for (int b = 0; b < br; ++b) ws[b] = panel + static_cast<size_t>(r + b) * stride;
          float block[kPassMaxMx * kPassMaxMr];
          kernels.fn[bx - 1][br - 1](xs, ws, k, block);
          for (int a = 0; a < bx; ++a) {
            float* yi = y + static_cast<size_t>(i + a) * n + r0 + r;
            for (int b = 0; b < br; ++b) {
              const float v = w.quant == QuantKind::kInt8 ? block[a * br + b] * factor[r + b] : block[a * br + b];
              yi[b] = bias ? v + bias[r0 + r + b] : v;
            }
          }
        }
      }
    }
  };
  ForEachTile(n, kPanelRows, k, m, pool, run);
}

// Up to this many input rows take the decode kernels (a weight row at a
// time, one stream); more take the register-blocked passes (LinearWide).
constexpr int kDirectMaxRows = 4;

void DotTilePortable(const float* x, const float* w, int rows, int k, float* out) {
  for (int r = 0; r < rows; ++r) {
    float s = 0;
    for (int j = 0; j < k; ++j) s += x[j] * w[r * k + j];
    out[r] = s;
  }
}

// Int4 weights by int8 inputs (MatrixView::int8_inputs). An input row is
// quantized per block of 32 columns, the int4 layout's blocks: the block's
// codes laid out as the weights' nibbles, four blocks (128 columns) a
// chunk: the 16 low-nibble columns of each block (64 bytes), then the 16
// high ones. A weight row's product is then, per block, an integer sum of
// code products times the weights' group scale times the block's input
// scale, plus each group's bias times the exact sum of its inputs.
struct Int8Inputs {
  int chunks = 0, blocks = 0, groups = 0;
  std::vector<int8_t> codes;   // [rows][chunks][128]
  std::vector<float> scales;   // [rows][chunks][16]: block 4c + l / 4's scale in lane l
  std::vector<float> sums;     // [rows][groups]: the inputs' sum over each weight group
};

void QuantizeInputs(const float* x, int m, int k, int group, Int8Inputs* in) {
  in->blocks = (k + 31) / 32;
  in->chunks = (in->blocks + 3) / 4;
  in->groups = (k + group - 1) / group;
  in->codes.assign(static_cast<size_t>(m) * in->chunks * 128, 0);
  in->scales.assign(static_cast<size_t>(m) * in->chunks * 16, 0.0f);
  in->sums.assign(static_cast<size_t>(m) * in->groups, 0.0f);
  for (int i = 0; i < m; ++i) {
    const float* xi = x + static_cast<size_t>(i) * k;
    int8_t* codes = in->codes.data() + static_cast<size_t>(i) * in->chunks * 128;
    float* scales = in->scales.data() + static_cast<size_t>(i) * in->chunks * 16;
    float* sums = in->sums.data() + static_cast<size_t>(i) * in->groups;
    for (int g = 0; g < in->groups; ++g) {
      float sum = 0.0f;
      for (int c = g * group; c < std::min(k, (g + 1) * group); ++c) sum += xi[c];
      sums[g] = sum;
    }
    for (int b = 0; b < in->blocks; ++b) {
      const int first = 32 * b, end = std::min(k, first + 32);
      float amax = 0.0f;
      for (int c = first; c < end; ++c) amax = std::max(amax, std::fabs(xi[c]));
      // A block too small for 127 / amax to be a float (below about 4e-37)
      // counts as zeros, as does one that is not finite.
      const float inv = amax > 0 ? 127.0f / amax : 0.0f;
      const bool zero = !std::isfinite(inv) || !std::isfinite(amax) || inv == 0.0f;
      const float scale = zero ? 0.0f : amax / 127.0f;
      int8_t* low = codes + (b / 4) * 128 + (b % 4) * 16;
      for (int c = first; c < end; ++c) {
        // Rounded to nearest even by adding and taking away 1.5 * 2^23 (|v|
        // is at most 127), as nearbyint would, without its call.
        if (zero) continue;
        const float v = xi[c] * inv;
        const float q = (v + 0x1.8p23f) - 0x1.8p23f;
        const int j = c - first;
        low[(j / 16) * 64 + j % 16] = static_cast<int8_t>(std::clamp(q, -127.0f, 127.0f));
      }
      for (int l = 0; l < 4; ++l) scales[(b / 4) * 16 + (b % 4) * 4 + l] = scale;
    }
  }
}

// A row's 16 lanes summed and its bias terms added, in one order for the
// portable and the vector kernels alike (the products fused explicitly:
// contracting them in one kernel only would change bits).
inline float FinishInt8Inputs(const float* lanes, const QRow& r, const Int8Inputs& in, int input) {
  float half[8];
  for (int l = 0; l < 8; ++l) half[l] = lanes[l] + lanes[l + 8];
  const float s = ((half[0] + half[4]) + (half[2] + half[6])) + ((half[1] + half[5]) + (half[3] + half[7]));
  // The bias terms: over groups, bias * the inputs' sum, in four partial sums.
  const float* sums = in.sums.data() + static_cast<size_t>(input) * in.groups;
  float t[4] = {};
  for (int g = 0; g < in.groups; ++g) t[g % 4] = std::fma(r.biases[g], sums[g], t[g % 4]);
  return s + ((t[0] + t[1]) + (t[2] + t[3]));
}

// One weight row by one quantized input row, lane by lane as the vector
// kernel adds them (lane l of chunk c: block 4c + l / 4, bytes 4 (l % 4)
// .. + 3 of each half), so the two give the same float sums.
float DotInt8InputsPortable(const QRow& r, const Int8Inputs& in, int row) {
  const int8_t* codes = in.codes.data() + static_cast<size_t>(row) * in.chunks * 128;
  const float* scales = in.scales.data() + static_cast<size_t>(row) * in.chunks * 16;
  const int block_shift = r.shift - 5;  // blocks a group: 1 << block_shift
  float lanes[16] = {};
  for (int c = 0; c < in.chunks; ++c) {
    for (int l = 0; l < 16; ++l) {
      const int b = 4 * c + l / 4;
      if (b >= in.blocks) continue;
      int32_t isum = 0;
      for (int half = 0; half < 2; ++half) {
        for (int e = 0; e < 4; ++e) {
          const int j = (l % 4) * 4 + e;  // byte of the block's 16
          const uint8_t byte = r.codes[b * 16 + j];
          const int code = half == 0 ? byte & 15 : byte >> 4;
          isum += code * codes[c * 128 + half * 64 + (l / 4) * 16 + j];
        }
      }
      const float scale = scales[c * 16 + l] * r.scales[b >> block_shift];
      lanes[l] = std::fma(static_cast<float>(isum), scale, lanes[l]);
    }
  }
  return FinishInt8Inputs(lanes, r, in, row);
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// Chunk c of a weight row into its accumulator (DotInt8InputsVnni).
__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline)) inline __m512 StepInt8Inputs(
    const QRow& r, int c, int blocks, int block_shift, __mmask64 bytes, __m512i xlo, __m512i xhi, __m512 xscale,
    __m512 acc) {
  const __m512i nibble = _mm512_set1_epi8(15);
  // A plain load where the chunk is whole.
  const uint8_t* at = r.codes + static_cast<size_t>(c) * 64;
  const __m512i w = blocks == 4 ? _mm512_loadu_si512(at) : _mm512_maskz_loadu_epi8(bytes, at);
  const __m512i lo = _mm512_and_si512(w, nibble), hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), nibble);
  const __m512i isum = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xlo), hi, xhi);
  __m512 wscale;
  if (block_shift == 0) {  // a group a block: lane l takes block l / 4's scale
    const __mmask16 four = static_cast<__mmask16>((1u << blocks) - 1);
    wscale = _mm512_permutexvar_ps(_mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0),
                                   _mm512_maskz_loadu_ps(four, r.scales + 4 * c));
  } else if (block_shift == 1) {  // two blocks a group
    const __mmask16 two = static_cast<__mmask16>(blocks > 2 ? 3 : 1);
    wscale = _mm512_permutexvar_ps(_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
                                   _mm512_maskz_loadu_ps(two, r.scales + 2 * c));
  } else {  // the chunk within one group
    wscale = _mm512_set1_ps(r.scales[(4 * c) >> block_shift]);
  }
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(xscale, wscale), acc);
}

// The same with AVX-512 VNNI: a chunk's 128 codes in one 64-byte load, its
// nibbles against the inputs in two vpdpbusd. (Four weight rows at once,
// sharing the inputs' loads, measured slower on the development VM: 22-28%
// of the bandwidth bound against this one's 40-60%.)
__attribute__((target("avx512f,avx512bw,avx512vnni"))) float DotInt8InputsVnni(const QRow& r, const Int8Inputs& in,
                                                                            int input) {
  const int8_t* codes = in.codes.data() + static_cast<size_t>(input) * in.chunks * 128;
  const float* scales = in.scales.data() + static_cast<size_t>(input) * in.chunks * 16;
  const int block_shift = r.shift - 5;  // blocks a group: 1 << block_shift
  __m512 acc = _mm512_setzero_ps();
  for (int c = 0; c < in.chunks; ++c) {
    const int blocks = std::min(4, in.blocks - 4 * c);
    const __mmask64 bytes = blocks == 4 ? ~__mmask64{0} : (__mmask64{1} << (16 * blocks)) - 1;
    acc = StepInt8Inputs(r, c, blocks, block_shift, bytes, _mm512_loadu_si512(codes + c * 128),
                         _mm512_loadu_si512(codes + c * 128 + 64), _mm512_loadu_ps(scales + c * 16), acc);
  }
  float lanes[16];
  _mm512_storeu_ps(lanes, acc);
  return FinishInt8Inputs(lanes, r, in, input);
}
#pragma GCC diagnostic pop

bool HasVnni() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vnni");
  return has;
}

void LinearInt8Inputs(const float* x, int m, const MatrixView& w, const float* bias, float* y, ThreadPool* pool,
                      LinearIsa isa) {
  const int n = w.rows, k = w.cols;
  Int8Inputs in;
  QuantizeInputs(x, m, k, w.group, &in);
  const bool vnni = isa == LinearIsa::kAvx512 && HasVnni();
  auto run = [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int r0 = static_cast<int>(t * kRowTile), rows = std::min(kRowTile, n - r0);
      QRow q[kRowTile];
      for (int r = 0; r < rows; ++r) q[r] = QRowOf(w, r0 + r);
      for (int i = 0; i < m; ++i) {
        for (int r = 0; r < rows; ++r) {
          const float v = vnni ? DotInt8InputsVnni(q[r], in, i) : DotInt8InputsPortable(q[r], in, i);
          y[static_cast<size_t>(i) * n + r0 + r] = bias ? v + bias[r0 + r] : v;
        }
      }
    }
  };
  ForEachTile(n, kRowTile, k, m, pool, run);
}

}  // namespace

LinearIsa BestLinearIsa() {
  static const LinearIsa best = [] {
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !__builtin_cpu_supports("f16c")) {
      return LinearIsa::kPortable;
    }
    return __builtin_cpu_supports("avx512f") ? LinearIsa::kAvx512 : LinearIsa::kAvx2;
  }();
  return best;
}

void Linear(const float* x, int m, const MatrixView& w, const float* bias, float* y, ThreadPool* pool) {
  Linear(x, m, w, bias, y, pool, BestLinearIsa());
}

void Linear(const float* x, int m, const MatrixView& w, const float* bias, float* y, ThreadPool* pool,
            LinearIsa isa) {
  const int n = w.rows, k = w.cols;
  if (m <= 0 || n <= 0) return;
  if (w.input_order != nullptr) {
    // The inputs in the order of the weights' columns, then a plain product.
    thread_local std::vector<float> ordered;
    ordered.resize(static_cast<size_t>(m) * k);
    for (int i = 0; i < m; ++i) {
      const float* in = x + static_cast<size_t>(i) * k;
      float* to = ordered.data() + static_cast<size_t>(i) * k;
      for (int c = 0; c < k; ++c) to[c] = in[w.input_order[c]];
    }
    MatrixView plain = w;
    plain.input_order = nullptr;
    return Linear(ordered.data(), m, plain, bias, y, pool, isa);
  }
  if (isa > BestLinearIsa()) isa = BestLinearIsa();
  if (w.quant == QuantKind::kInt4 && w.int8_inputs && w.group >= 32) {
    return LinearInt8Inputs(x, m, w, bias, y, pool, isa);
  }
  if (w.bf16_inputs && w.dtype == DType::kBF16 && !w.quantized()) {
    return LinearBf16Inputs(x, m, w, bias, y, pool, isa);
  }
  const bool vector = isa != LinearIsa::kPortable;
  if (vector && m > kDirectMaxRows) return LinearWide(x, m, w, bias, y, pool, isa);
  const Blocks blocks = vector ? BlocksFor(isa, w) : Blocks{};
  const size_t row_bytes = w.row_bytes();
  auto run = [&](int64_t tile_begin, int64_t tile_end) {
    thread_local std::vector<float> scratch;
    if (w.dtype != DType::kF32) scratch.resize(static_cast<size_t>(kRowTile) * k);
    float out[kRowTile];
    for (int64_t t = tile_begin; t < tile_end; ++t) {
      const int r0 = static_cast<int>(t * kRowTile);
      const int rows = std::min(kRowTile, n - r0);
      const char* src = static_cast<const char*>(w.data) + static_cast<size_t>(r0) * row_bytes;
      if (vector) {
        // Few input rows read the weights as they are, a row at a time: a
        // weight matrix is one stream.
        const int mx = isa == LinearIsa::kAvx512 ? 2 : 1;
        QRow qrows[kRowTile];
        for (int r = 0; r < rows && w.quantized(); ++r) qrows[r] = QRowOf(w, r0 + r);
        for (int i = 0; i < m; i += mx) {
          const int bx = std::min(mx, m - i);
          const float* xs[2] = {x + static_cast<size_t>(i) * k, x + static_cast<size_t>(i + bx - 1) * k};
          for (int r = 0; r < rows; ++r) {
            const void* ws[1] = {w.quantized() ? static_cast<const void*>(&qrows[r]) : src + r * row_bytes};
            float block[2];
            blocks.fn[bx - 1](xs, ws, k, block);
            for (int a = 0; a < bx; ++a) {
              y[static_cast<size_t>(i + a) * n + r0 + r] = bias ? block[a] + bias[r0 + r] : block[a];
            }
          }
        }
        continue;
      }
      const float* wt = reinterpret_cast<const float*>(src);
      float factor[kRowTile] = {1, 1, 1, 1};
      if (w.quantized()) {
        for (int r = 0; r < rows; ++r) factor[r] = WidenRow(w, r0 + r, scratch.data() + static_cast<size_t>(r) * k);
        wt = scratch.data();
      } else if (w.dtype != DType::kF32) {
        ToF32Portable(w.dtype, src, rows * k, scratch.data());
        wt = scratch.data();
      }
      for (int i = 0; i < m; ++i) {
        DotTilePortable(x + static_cast<size_t>(i) * k, wt, rows, k, out);
        float* yi = y + static_cast<size_t>(i) * n + r0;
        for (int r = 0; r < rows; ++r) {
          const float v = w.quant == QuantKind::kInt8 ? out[r] * factor[r] : out[r];
          yi[r] = bias ? v + bias[r0 + r] : v;
        }
      }
    }
  };
  ForEachTile(n, kRowTile, k, m, pool, run);
}

void GatherRow(const MatrixView& w, int row, float* out) {
  if (w.input_order != nullptr) {  // back in the inputs' order
    thread_local std::vector<float> row_in_columns;
    row_in_columns.resize(w.cols);
    MatrixView plain = w;
    plain.input_order = nullptr;
    GatherRow(plain, row, row_in_columns.data());
    for (int c = 0; c < w.cols; ++c) out[w.input_order[c]] = row_in_columns[c];
    return;
  }
  if (w.quantized()) {
    const float factor = WidenRow(w, row, out);
    if (w.quant == QuantKind::kInt8) {
      for (int c = 0; c < w.cols; ++c) out[c] *= factor;
    }
    return;
  }
  const char* src = static_cast<const char*>(w.data) + static_cast<size_t>(row) * w.row_bytes();
  ConvertToF32(w.dtype, src, w.cols, out);
}

}  // namespace moemesh
