#include "core/kernels/cpu/attention.h"

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

}  // namespace

void CausalAttention(const AttentionShape& s, const float* q, int n, int first_pos,
                     const KvPages& kv, float* out, ThreadPool* pool) {
  const int group = s.num_heads / s.num_kv_heads;
  auto work = [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scores;
    for (int64_t job = begin; job < end; ++job) {
      const int i = static_cast<int>(job / s.num_heads);
      const int h = static_cast<int>(job % s.num_heads);
      const int kvh = h / group;
      const int pos = first_pos + i;
      const int lo = s.sliding_window > 0 ? std::max(0, pos - s.sliding_window + 1) : 0;
      const int count = pos - lo + 1;
      scores.resize(count);
      const float* qh = q + (static_cast<long>(i) * s.num_heads + h) * s.head_dim;
      float mx = -INFINITY;
      for (int t = lo; t <= pos; ++t) {
        const float* k = kv.k_blocks[t / kv.block_size] +
                         static_cast<long>(t % kv.block_size) * kv.k_stride + kv.k_offset +
                         static_cast<long>(kvh) * s.head_dim;
        float sc = Dot8(qh, k, s.head_dim) * s.scale;
        scores[t - lo] = sc;
        mx = std::max(mx, sc);
      }
      double sum = 0;
      for (int j = 0; j < count; ++j) {
        scores[j] = std::exp(scores[j] - mx);
        sum += scores[j];
      }
      const float inv = static_cast<float>(1.0 / sum);
      float* o = out + (static_cast<long>(i) * s.num_heads + h) * s.v_head_dim;
      std::fill(o, o + s.v_head_dim, 0.0f);
      for (int t = lo; t <= pos; ++t) {
        const float p = scores[t - lo] * inv;
        const float* v = kv.v_blocks[t / kv.block_size] +
                         static_cast<long>(t % kv.block_size) * kv.v_stride + kv.v_offset +
                         static_cast<long>(kvh) * s.v_head_dim;
        for (int d = 0; d < s.v_head_dim; ++d) o[d] += p * v[d];
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
