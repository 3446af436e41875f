#ifndef MOEMESH_CORE_KERNELS_CUDA_ROPE_H_
#define MOEMESH_CORE_KERNELS_CUDA_ROPE_H_

#include "absl/status/status.h"
#include "core/kernels/cuda/cuda_runtime_util.h"

namespace moemesh {

// Rotary embedding on the GPU for every scaling type: the host computes the
// step's inverse frequencies and attention scaling with core/kernels/cpu's
// Rope (InvFreq, attention_scaling), which is where the scaling types
// differ; this applies them as Rope::Angles and Rope::Apply do. For token
// t at positions[t], rotates the first `dim` channels of `num_heads`
// vectors at x + t * token_stride + h * head_stride; interleaved pairs come
// out de-interleaved, as transformers' DeepSeek code. `inv_freq` [dim / 2],
// `positions` [tokens] and `x` are device pointers.
absl::Status RopeCuda(const float* inv_freq, float attention_scaling, int dim, bool interleaved,
                      const int* positions, int tokens, int num_heads, int token_stride, int head_stride, float* x,
                      CudaStream stream);

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_ROPE_H_
