#include "core/kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/tensor/thread_pool.h"

namespace moemesh {

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
        float dot = 0;
        for (int d = 0; d < s.head_dim; ++d) dot += qh[d] * k[d];
        float sc = dot * s.scale;
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
