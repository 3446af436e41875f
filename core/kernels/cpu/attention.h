#ifndef MOEMESH_CORE_KERNELS_CPU_ATTENTION_H_
#define MOEMESH_CORE_KERNELS_CPU_ATTENTION_H_

namespace moemesh {

class ThreadPool;

// Keys and values of one sequence in a paged cache: position t lives in
// block t / block_size at row t % block_size; a row of K holds
// num_kv_heads * head_dim floats at offset `k_offset` of a `k_stride`-float
// row (likewise V). K and V may share rows (latent attention).
struct KvPages {
  const float* const* k_blocks = nullptr;
  const float* const* v_blocks = nullptr;
  int block_size = 0;
  int k_stride = 0;
  int v_stride = 0;
  int k_offset = 0;
  int v_offset = 0;
};

struct AttentionShape {
  int num_heads = 0;
  int num_kv_heads = 0;  // divides num_heads (grouped-query attention)
  int head_dim = 0;      // q and k
  int v_head_dim = 0;
  float scale = 1.0f;
  int sliding_window = 0;  // 0: full causal; else keys t > p - window
};

// Causal attention for `n` queries of one sequence at positions
// first_pos .. first_pos + n - 1, whose keys (positions 0 .. first_pos+n-1)
// are already in `kv`. q: [n, num_heads * head_dim]; out: [n, num_heads *
// v_head_dim]. Softmax in fp32 as transformers' eager attention.
// Uses AVX2 where the CPU has it (the same sums bit for bit: the vector
// code multiplies and adds as the portable loops do, column by column).
void CausalAttention(const AttentionShape& shape, const float* q, int n, int first_pos,
                     const KvPages& kv, float* out, ThreadPool* pool);
// With AVX2 only where `avx2` and the CPU has it, for tests.
void CausalAttention(const AttentionShape& shape, const float* q, int n, int first_pos, const KvPages& kv, float* out,
                     ThreadPool* pool, bool avx2);
bool AttentionUsesAvx2();

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CPU_ATTENTION_H_
