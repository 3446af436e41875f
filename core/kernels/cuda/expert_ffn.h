#ifndef MOEMESH_CORE_KERNELS_CUDA_EXPERT_FFN_H_
#define MOEMESH_CORE_KERNELS_CUDA_EXPERT_FFN_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "core/kernels/cuda/cuda_runtime_util.h"

namespace moemesh {

// One expert's rows in a batch for ExpertFfnCuda. Weight pointers are on the
// device, bf16, row-major: gate and up [intermediate, hidden], down
// [hidden, intermediate]. The group's rows are rows [row_offset,
// row_offset + num_rows) of the gathered input.
struct ExpertFfnGroup {
  const uint16_t* gate = nullptr;
  const uint16_t* up = nullptr;
  const uint16_t* down = nullptr;
  int row_offset = 0;
  int num_rows = 0;
};

// The routed experts of one layer on the GPU, as ComputeExpertRows does on
// the CPU: out[r] = row_weight[r] * down(silu(gate x_r) * up x_r) for every
// gathered row r, with x_r in fp32, bf16 weights and fp32 accumulation.
// `x` [total_rows, hidden], `row_weight` [total_rows], `act` (scratch,
// [total_rows, intermediate]) and `out` [total_rows, hidden] are device
// pointers. Groups may be empty. Enqueued on `stream`, with the group table
// copied to a stream-ordered device allocation; `groups` need not outlive
// the call.
absl::Status ExpertFfnCuda(const float* x, const float* row_weight, const std::vector<ExpertFfnGroup>& groups,
                           int hidden, int intermediate, float* act, float* out, CudaStream stream);

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_EXPERT_FFN_H_
