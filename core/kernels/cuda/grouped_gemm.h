#ifndef MOEMESH_CORE_KERNELS_CUDA_GROUPED_GEMM_H_
#define MOEMESH_CORE_KERNELS_CUDA_GROUPED_GEMM_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "core/kernels/cuda/cuda_runtime_util.h"
#include "core/kernels/cuda/expert_ffn.h"

namespace moemesh {

// The expert FFN's two products for every group of a batch in two
// launches, on Hopper's tensor cores (wgmma, fed by TMA), for
// CudaExpertFfn's groups of a few to a few hundred rows:
//   act[r, j] = row_weight[r] * silu(gate_j . x_r) * (up_j . x_r)   (bf16)
//   out[r, h] = down_h . act_r                                       (fp32)
// Products accumulate in fp32. A block takes 128 of one expert's neurons
// (256 outputs) against up to 128 of its rows, so each weight is read once
// per group of up to 128 rows (larger groups take several blocks, which
// share the weights through L2), and SwiGLU and the row weights are
// applied before anything leaves the block. Rows are `x`'s, bf16, in the groups' order
// (ExpertFfnGroup::row_offset); act has the same rows.
// Not thread-safe: one instance per stream.
class CudaGroupedGemm {
 public:
  // Whether this process's current device runs the kernels (compute
  // capability 9.0) and shapes fit them: hidden and intermediate sizes that
  // are multiples of 8 (TMA's 16-byte strides).
  static bool Supported(int hidden, int intermediate);

  // FAILED_PRECONDITION when !Supported.
  static absl::StatusOr<std::unique_ptr<CudaGroupedGemm>> Create(int hidden, int intermediate);
  ~CudaGroupedGemm();
  CudaGroupedGemm(const CudaGroupedGemm&) = delete;
  CudaGroupedGemm& operator=(const CudaGroupedGemm&) = delete;

  // Both products for `groups` (those with rows; weights 16-byte aligned,
  // else INVALID_ARGUMENT). `x` [rows, hidden] bf16, `row_weight` [rows],
  // `act` [rows, intermediate] bf16 scratch and `out` [rows, hidden] fp32
  // are device pointers, rows the end of the last group. Enqueued on
  // `stream`; `groups` need not outlive the call.
  absl::Status Run(const uint16_t* x, const float* row_weight, const std::vector<ExpertFfnGroup>& groups,
                   uint16_t* act, float* out, CudaStream stream);

 private:
  struct Maps;
  CudaGroupedGemm(int hidden, int intermediate, int sm_count);

  const int hidden_, intermediate_, sm_count_;
  std::unique_ptr<Maps> maps_;             // TMA descriptors of weights, by address
  std::unique_ptr<DeviceBuffer> table_;    // the launches' group tables
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_GROUPED_GEMM_H_
