#ifndef MOEMESH_CORE_KERNELS_CUDA_ATTENTION_H_
#define MOEMESH_CORE_KERNELS_CUDA_ATTENTION_H_

#include "absl/status/status.h"
#include "core/kernels/cpu/attention.h"
#include "core/kernels/cuda/cuda_runtime_util.h"

namespace moemesh {

// CausalAttention (core/kernels/cpu/attention.h) on the GPU, over a paged
// KV cache in device memory: `kv.k_blocks` and `kv.v_blocks` are device
// arrays of device pointers, and `q`, `out` are device pointers. GQA,
// sliding windows, and K/V head sizes that differ (latent attention) as on
// the CPU. Each (query, head) is one block whose warps walk the keys with
// an online softmax in fp32, then merge. Head sizes up to 640 (DeepSeek-V3's
// latent rows are 512 + 64 wide).
inline constexpr int kMaxAttentionHeadDim = 640;
absl::Status CausalAttentionCuda(const AttentionShape& shape, const float* q, int n, int first_pos,
                                 const KvPages& kv, float* out, CudaStream stream);

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_ATTENTION_H_
