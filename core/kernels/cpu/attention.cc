#include "core/kernels/cpu/attention.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/tensor/thread_pool.h"

namespace moemesh {

namespace {

// dot(a, b) over n floats in eight interleaved partial sums: eight chains
// of adds instead of one that waits on each (a query-key product was
// 4 cycles an element), which compilers keep in one vector; one fixed
// order on every machine.
inline float Dot8(const float* a, const float* b, int n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int d = 0;
  for (; d + 8 <= n; d += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[d + j] * b[d + j];
  }
  float sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; d < n; ++d) sum += a[d] * b[d];
  return sum;
}

// Dot8 of `q` with four rows at once: the same sums bit for bit (a multiply
// then an add, never fused: "avx2" without "fma"), in four independent
// chains of adds where one waited on each.
__attribute__((target("avx2"))) void Dot8x4Avx2(const float* q, const float* const* k, int n, float* out) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int d = 0;
  for (; d + 8 <= n; d += 8) {
    const __m256 qv = _mm256_loadu_ps(q + d);
    for (int j = 0; j < 4; ++j) acc[j] = _mm256_add_ps(acc[j], _mm256_mul_ps(qv, _mm256_loadu_ps(k[j] + d)));
  }
  for (int j = 0; j < 4; ++j) {
    alignas(32) float a[8];
    _mm256_store_ps(a, acc[j]);
    float sum = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
    for (int e = d; e < n; ++e) sum += q[e] * k[j][e];
    out[j] = sum;
  }
}

// o[d] = sum over t of p[t] * v[t][d], t in order from zero (as the loop
// `o[d] += p[t] * v[t][d]` sums), each lane a column; the sums kept in
// registers, 32 columns at a time, where that loop stored every one.
__attribute__((target("avx2"))) void WeightedRowsAvx2(const float* p, const float* const* v, int count, int dim,
                                                       float* o) {
  int d = 0;
  for (; d + 32 <= dim; d += 32) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int t = 0; t < count; ++t) {
      const __m256 pt = _mm256_set1_ps(p[t]);
      for (int j = 0; j < 4; ++j) acc[j] = _mm256_add_ps(acc[j], _mm256_mul_ps(pt, _mm256_loadu_ps(v[t] + d + 8 * j)));
    }
    for (int j = 0; j < 4; ++j) _mm256_storeu_ps(o + d + 8 * j, acc[j]);
  }
  for (; d + 8 <= dim; d += 8) {
    __m256 acc = _mm256_setzero_ps();
    for (int t = 0; t < count; ++t) acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(p[t]), _mm256_loadu_ps(v[t] + d)));
    _mm256_storeu_ps(o + d, acc);
  }
  for (; d < dim; ++d) {
    float acc = 0;
    for (int t = 0; t < count; ++t) acc += p[t] * v[t][d];
    o[d] = acc;
  }
}

void WeightedRowsPortable(const float* p, const float* const* v, int count, int dim, float* o) {
  std::fill(o, o + dim, 0.0f);
  for (int t = 0; t < count; ++t) {
    for (int d = 0; d < dim; ++d) o[d] += p[t] * v[t][d];
  }
}

}  // namespace

bool AttentionUsesAvx2() {
  static const bool avx2 = __builtin_cpu_supports("avx2");
  return avx2;
}

void CausalAttention(const AttentionShape& s, const float* q, int n, int first_pos,
                     const KvPages& kv, float* out, ThreadPool* pool) {
  CausalAttention(s, q, n, first_pos, kv, out, pool, AttentionUsesAvx2());
}

void CausalAttention(const AttentionShape& s, const float* q, int n, int first_pos, const KvPages& kv, float* out,
                     ThreadPool* pool, bool avx2) {
  avx2 = avx2 && AttentionUsesAvx2();
  const int group = s.num_heads / s.num_kv_heads;
  auto work = [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scores;
    thread_local std::vector<const float*> keys, values;
    for (int64_t job = begin; job < end; ++job) {
      const int i = static_cast<int>(job / s.num_heads);
      const int h = static_cast<int>(job % s.num_heads);
      const int kvh = h / group;
      const int pos = first_pos + i;
      const int lo = s.sliding_window > 0 ? std::max(0, pos - s.sliding_window + 1) : 0;
      const int count = pos - lo + 1;
      scores.resize(count);
      keys.resize(count);
      values.resize(count);
      for (int t = lo; t <= pos; ++t) {
        const long row = static_cast<long>(t % kv.block_size);
        keys[t - lo] = kv.k_blocks[t / kv.block_size] + row * kv.k_stride + kv.k_offset +
                       static_cast<long>(kvh) * s.head_dim;
        values[t - lo] = kv.v_blocks[t / kv.block_size] + row * kv.v_stride + kv.v_offset +
                         static_cast<long>(kvh) * s.v_head_dim;
      }
      const float* qh = q + (static_cast<long>(i) * s.num_heads + h) * s.head_dim;
      int j = 0;
      if (avx2) {
        for (; j + 4 <= count; j += 4) Dot8x4Avx2(qh, keys.data() + j, s.head_dim, scores.data() + j);
      }
      for (; j < count; ++j) scores[j] = Dot8(qh, keys[j], s.head_dim);
      float mx = -INFINITY;
      for (j = 0; j < count; ++j) {
        scores[j] *= s.scale;
        mx = std::max(mx, scores[j]);
      }
      double sum = 0;
      for (j = 0; j < count; ++j) {
        scores[j] = std::exp(scores[j] - mx);
        sum += scores[j];
      }
      const float inv = static_cast<float>(1.0 / sum);
      for (j = 0; j < count; ++j) scores[j] *= inv;
      float* o = out + (static_cast<long>(i) * s.num_heads + h) * s.v_head_dim;
      if (avx2) {
        WeightedRowsAvx2(scores.data(), values.data(), count, s.v_head_dim, o);
      } else {
        WeightedRowsPortable(scores.data(), values.data(), count, s.v_head_dim, o);
      }
    }
  };
  int64_t jobs = static_cast<int64_t>(n) * s.num_heads;
  // Each job reads (first_pos + i) keys; group enough of them per chunk.
  int64_t per_job = static_cast<int64_t>(first_pos + n) * (s.head_dim + s.v_head_dim);
  int64_t grain = std::max<int64_t>(1, 32768 / (per_job + 1));
  if (pool) {
    pool->ParallelFor(jobs, grain, work);
  } else {
    work(0, jobs);
  }
}

}  // namespace moemesh
