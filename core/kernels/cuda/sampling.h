#ifndef MOEMESH_CORE_KERNELS_CUDA_SAMPLING_H_
#define MOEMESH_CORE_KERNELS_CUDA_SAMPLING_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/kernels/cuda/cuda_runtime_util.h"

namespace moemesh {

// One row to sample, with vLLM's parameters as in SamplingParams
// (core/engine/sampler.h).
struct SampleRowParams {
  int row = 0;  // row of the logits
  float temperature = 0;  // 0: greedy
  int top_k = 0;
  float top_p = 1;
  float min_p = 0;
  float repetition_penalty = 1;
  float presence_penalty = 0;
  float frequency_penalty = 0;
  double uniform = 0;  // the draw in [0, 1), when temperature > 0
  // Entries [penalty_begin, penalty_end) of the penalty table.
  int penalty_begin = 0, penalty_end = 0;
};

// A token the penalties touch: every token of the prompt and output once,
// with its count in the output (0: prompt only).
struct PenaltyToken {
  int token = 0;
  int count = 0;
};

// Sampler::Sample (core/engine/sampler.cc) on the GPU: penalties, then the
// greedy argmax (ties to the lower id), or top-k, softmax with temperature,
// top-p and min-p over the candidates sorted by logit (ties by id), and the
// token whose interval holds `uniform`. Given the same draw it picks the
// CPU's token, unless the draw falls within rounding (about 1e-15) of a
// boundary between two tokens: the GPU's sums run in another order.
// Sampled rows sort the whole vocabulary (radix sorts of up to 16 rows).
// Holds its scratch; one instance per stream.
class CudaSampler {
 public:
  CudaSampler();
  ~CudaSampler();
  CudaSampler(const CudaSampler&) = delete;
  CudaSampler& operator=(const CudaSampler&) = delete;

  // `logits`: [logits_rows, vocab] on the device; penalised entries change
  // in place. Writes one token per entry of `rows` to host `tokens`.
  // INVALID_ARGUMENT for parameters outside their ranges or rows or
  // penalty entries out of bounds.
  absl::Status Run(float* logits, int logits_rows, int vocab, absl::Span<const SampleRowParams> rows,
                   absl::Span<const PenaltyToken> penalties, int* tokens, CudaStream stream);

 private:
  std::unique_ptr<DeviceBuffer> table_, penalties_, keys_, values_, temp_, tokens_;
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_SAMPLING_H_
