#include "core/quant/fp8_rows.h"

#include <immintrin.h>

#include <cmath>
#include <limits>

#include "core/tensor/dtype.h"

namespace moemesh {
namespace {

// The router quantizes every row it sends, every layer: eight columns at a
// time where the CPU has AVX2, with the bits of the scalar code.
bool HasAvx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}

// F32ToF8E4M3Fast on eight finite values, their codes to `out`.
__attribute__((target("avx2"))) void EncodeAvx2(__m256 x, uint8_t* out) {
  const __m256i bits = _mm256_castps_si256(x);
  const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(bits, 24), _mm256_set1_epi32(0x80));
  const __m256 a = _mm256_min_ps(_mm256_castsi256_ps(_mm256_and_si256(bits, _mm256_set1_epi32(0x7FFFFFFF))),
                                 _mm256_set1_ps(448.0f));
  const __m256i sub =
      _mm256_sub_epi32(_mm256_castps_si256(_mm256_add_ps(a, _mm256_set1_ps(0x1p14f))), _mm256_set1_epi32(0x46800000));
  __m256i norm = _mm256_castps_si256(a);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(norm, 20), _mm256_set1_epi32(1));
  norm = _mm256_add_epi32(norm, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFFF)));
  norm = _mm256_sub_epi32(_mm256_srli_epi32(norm, 20), _mm256_set1_epi32(120 << 3));
  const __m256 small = _mm256_cmp_ps(a, _mm256_set1_ps(0x1p-6f), _CMP_LT_OQ);
  const __m256i code = _mm256_or_si256(
      _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(norm), _mm256_castsi256_ps(sub), small)), sign);
  // Byte 0 of each lane's four words, then the two lanes' four bytes side by side.
  const __m256i picked = _mm256_shuffle_epi8(
      code, _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1, -1, -1, -1,
                             -1, -1, -1, -1, -1, -1, -1, -1));
  const __m128i both = _mm_unpacklo_epi32(_mm256_castsi256_si128(picked), _mm256_extracti128_si256(picked, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(out), both);
}

// A group's largest magnitude, and whether all its values are finite.
__attribute__((target("avx2"))) float AbsMaxAvx2(const float* x, int n, bool* finite) {
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 m = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
  int c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m256 a = _mm256_and_ps(_mm256_loadu_ps(x + c), magnitude);
    m = _mm256_max_ps(m, a);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, _mm256_set1_ps(std::numeric_limits<float>::max()), _CMP_NLE_UQ));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m);
  float amax = 0;
  for (float v : lanes) amax = std::max(amax, v);
  bool ok = _mm256_movemask_ps(bad) == 0;
  for (; c < n; ++c) {
    const float a = std::fabs(x[c]);
    amax = std::max(amax, a);
    ok = ok && a <= std::numeric_limits<float>::max();
  }
  *finite = ok;
  return amax;
}

__attribute__((target("avx2"))) void QuantizeGroupAvx2(const float* x, int n, float scale, uint8_t* codes) {
  const __m256 s = _mm256_set1_ps(scale);
  int c = 0;
  for (; c + 8 <= n; c += 8) EncodeAvx2(_mm256_div_ps(_mm256_loadu_ps(x + c), s), codes + c);
  for (; c < n; ++c) codes[c] = F32ToF8E4M3Fast(x[c] / scale);
}

__attribute__((target("avx2"))) void DequantizeGroupAvx2(const uint8_t* codes, int n, float scale, float* x) {
  const __m256 s = _mm256_set1_ps(scale);
  int c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + c)));
    const __m256i bits = _mm256_or_si256(_mm256_slli_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0x7F)), 20),
                                         _mm256_slli_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0x80)), 24));
    const __m256 f = _mm256_mul_ps(_mm256_castsi256_ps(bits), _mm256_set1_ps(0x1p120f));  // F8E4M3ToF32
    _mm256_storeu_ps(x + c, _mm256_mul_ps(f, s));
  }
  for (; c < n; ++c) x[c] = F8E4M3ToF32(codes[c]) * scale;
}

float AbsMax(const float* x, int n, bool* finite) {
  float amax = 0;
  bool ok = true;
  for (int c = 0; c < n; ++c) {
    const float a = std::fabs(x[c]);
    amax = std::max(amax, a);
    ok = ok && a <= std::numeric_limits<float>::max();  // false for NaN too
  }
  *finite = ok;
  return amax;
}

}  // namespace

void QuantizeRowFp8(const float* row, int cols, uint8_t* codes, float* scales) {
  const bool avx2 = HasAvx2();
  for (int c0 = 0, g = 0; c0 < cols; c0 += kFp8RowGroup, ++g) {
    const int n = std::min(kFp8RowGroup, cols - c0);
    bool finite = true;
    const float amax = avx2 ? AbsMaxAvx2(row + c0, n, &finite) : AbsMax(row + c0, n, &finite);
    if (!finite) {  // comes back non-finite, as f32 rows would carry it on
      scales[g] = std::numeric_limits<float>::quiet_NaN();
      std::fill(codes + c0, codes + c0 + n, 0);
      continue;
    }
    if (amax < std::numeric_limits<float>::min()) {  // zeros, or too small to divide by
      scales[g] = 0;
      std::fill(codes + c0, codes + c0 + n, 0);
      continue;
    }
    const float scale = amax / 448.0f;
    scales[g] = scale;
    if (avx2) {
      QuantizeGroupAvx2(row + c0, n, scale, codes + c0);
    } else {
      for (int c = 0; c < n; ++c) codes[c0 + c] = F32ToF8E4M3Fast(row[c0 + c] / scale);
    }
  }
}

void DequantizeRowFp8(const uint8_t* codes, const float* scales, int cols, float* row) {
  const bool avx2 = HasAvx2();
  for (int c0 = 0, g = 0; c0 < cols; c0 += kFp8RowGroup, ++g) {
    const int n = std::min(kFp8RowGroup, cols - c0);
    if (avx2) {
      DequantizeGroupAvx2(codes + c0, n, scales[g], row + c0);
    } else {
      for (int c = 0; c < n; ++c) row[c0 + c] = F8E4M3ToF32(codes[c0 + c]) * scales[g];
    }
  }
}

}  // namespace moemesh
