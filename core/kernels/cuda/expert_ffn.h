#ifndef MOEMESH_CORE_KERNELS_CUDA_EXPERT_FFN_H_
#define MOEMESH_CORE_KERNELS_CUDA_EXPERT_FFN_H_

#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "core/kernels/cuda/cuda_runtime_util.h"

namespace moemesh {

class CudaGroupedGemm;

// One expert's rows in a batch for CudaExpertFfn. Weight pointers are on the
// device, bf16, row-major: gate and up [intermediate, hidden], down
// [hidden, intermediate]; 16-byte aligned. When `up` directly follows
// `gate` (one [2 * intermediate, hidden] allocation) the large-batch path
// does both in one GEMM. The group's rows are rows [row_offset,
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
// gathered row r. The rows and the activations between the two products
// are bf16 (as in vLLM and SGLang), products accumulate in fp32, and the
// output is fp32. Three paths, by a group's rows:
//   * fewer than `gemm_min_rows` (decode; `grouped_min_rows` on Hopper):
//     moemesh's own tensor-core kernel, which streams each weight once for
//     up to 32 rows and fuses SwiGLU;
//   * on Hopper, up to `grouped_max_rows` (more with few experts, see
//     Options): moemesh's grouped GEMM (CudaGroupedGemm), two launches for
//     all such groups, which reads each weight once per group and fuses
//     SwiGLU and the row weights;
//   * the rest (all of them on other GPUs): cuBLAS GEMMs (bf16 in, fp32
//     accumulation), with SwiGLU and the row weights fused into one kernel
//     between them. Groups whose gate and up are one matrix go in batched
//     GEMMs, one call per row count rounded up to 8 (a few calls for all
//     experts, where a call per expert would leave the GPU waiting on the
//     host, as with DeepSeek-V3's 256 experts). Groups of 512 rows or more,
//     calls with fewer than 16 such groups (Mixtral's 8 experts), and groups
//     with gate and up apart run one by one, taking turns over a few
//     streams, so that their GEMMs run side by side.
// The thresholds come from bench/expert_ffn_bench (docs/PERFORMANCE.md).
// Not thread-safe: one instance per stream. Scratch grows as needed.
class CudaExpertFfn {
 public:
  struct Options {
    // Groups with fewer rows run in the decode kernel (grouped_min_rows
    // where the grouped GEMM runs).
    int gemm_min_rows = 32;
    // Streams (each with a cuBLAS handle) that cuBLAS's groups take turns on.
    int gemm_streams = 4;
    // On Hopper (CudaGroupedGemm::Supported), groups of grouped_min_rows to
    // grouped_max_rows rows run in moemesh's grouped GEMM, two launches for
    // all of them; larger ones (and all, elsewhere) on cuBLAS. Where too few
    // of the larger ones would go in cuBLAS's batched calls (fewer than
    // kBatchMinGroups: Mixtral's 8 experts), up to
    // grouped_max_rows_few_groups (by default all: there it beats, or
    // ties with, one cuBLAS GEMM per group at every size measured, Mixtral's
    // and DeepSeek-V3's groups of 512 rows and more). The crossovers are
    // bench/expert_ffn_bench's (docs/PERFORMANCE.md).
    bool grouped_gemm = true;
    int grouped_min_rows = 8;
    int grouped_max_rows = 64;
    int grouped_max_rows_few_groups = std::numeric_limits<int>::max();
  };

  // INVALID_ARGUMENT for non-positive sizes.
  static absl::StatusOr<std::unique_ptr<CudaExpertFfn>> Create(int hidden, int intermediate, const Options& options);
  static absl::StatusOr<std::unique_ptr<CudaExpertFfn>> Create(int hidden, int intermediate) {
    return Create(hidden, intermediate, Options());
  }
  ~CudaExpertFfn();
  CudaExpertFfn(const CudaExpertFfn&) = delete;
  CudaExpertFfn& operator=(const CudaExpertFfn&) = delete;

  // `x` [total_rows, hidden] fp32, `row_weight` [total_rows] and `out`
  // [total_rows, hidden] fp32 are device pointers; total_rows is the end of
  // the last group. Groups may be empty. Enqueued on `stream`; `groups` need
  // not outlive the call.
  absl::Status Run(const float* x, const float* row_weight, const std::vector<ExpertFfnGroup>& groups, float* out,
                   CudaStream stream);

  // The decode kernels over groups whose table is already on the device
  // (GroupExpertsCuda writes it): out[r] = row_weight[r] * FFN_g(x[gather[r]])
  // for every row r of every group g, rows [0, rows); `gather` null reads
  // x[r]. `max_group_rows`
  // bounds any group's rows (it sets the kernels' row tiles; at most the
  // tokens routed). Nothing waits on the host: for decode, where groups are
  // a few rows each. Enqueued on `stream`.
  absl::Status RunGathered(const float* x, const int* gather, const float* row_weight, const ExpertFfnGroup* groups,
                           int num_groups, int rows, int max_group_rows, float* out, CudaStream stream);

  int hidden() const { return hidden_; }
  int intermediate() const { return intermediate_; }

 private:
  struct GemmStreams;
  CudaExpertFfn(int hidden, int intermediate, const Options& options);
  absl::Status Reserve(size_t rows, size_t groups);
  // The groups of `min_rows` rows or more: grouped GEMM, cuBLAS.
  absl::Status RunGemms(const std::vector<ExpertFfnGroup>& groups, int min_rows, const float* row_weight, float* out,
                        CudaStream stream);
  absl::Status RunCublas(const std::vector<ExpertFfnGroup>& groups, int min_rows, const float* row_weight,
                         float* out, CudaStream stream);
  // Whether cuBLAS's batched calls can take a large group: under
  // kBatchMaxRows rows, gate and up one matrix. RunGemms' rule for few
  // groups counts the same groups that RunCublas batches.
  bool CublasBatches(const ExpertFfnGroup& g) const;

  const int hidden_, intermediate_;
  const Options options_;
  std::unique_ptr<GemmStreams> gemm_;  // made on first use
  std::unique_ptr<CudaGroupedGemm> grouped_;  // made on first use where supported
  bool grouped_checked_ = false;
  size_t rows_reserved_ = 0, groups_reserved_ = 0;
  // Rows of the batched GEMMs are padded to a multiple of kPadRows. Groups
  // of kBatchMaxRows rows or more fill the GPU alone, and fewer than
  // kBatchMinGroups groups keep the host ahead of the GPU: those run one by
  // one, where cuBLAS picks faster kernels than for a batch.
  static constexpr int kPadRows = 8, kBatchMaxRows = 512, kBatchMinGroups = 16;
  std::unique_ptr<DeviceBuffer> x_bf16_, act_, gate_up_, table_;
  std::unique_ptr<DeviceBuffer> down_, batch_table_;  // the batched GEMMs' padded output and pointer arrays
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CUDA_EXPERT_FFN_H_
