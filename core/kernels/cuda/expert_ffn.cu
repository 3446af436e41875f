#include "core/kernels/cuda/expert_ffn.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/kernels/cuda/cublas_loader.cuh"
#include "core/kernels/cuda/cp_async.cuh"
#include "core/kernels/cuda/cuda_check.cuh"
#include "core/kernels/cuda/dense.h"
#include "core/kernels/cuda/grouped_gemm.h"

namespace moemesh {
namespace {

// The decode path. A weight matrix times a few rows is bound by reading the
// weights, so one pass streams each weight once with 16-byte copies and
// applies it to up to 8 * kTiles rows (kTiles of 1, 2 or 4, by the largest
// group) on the tensor cores (mma.sync.m16n8k16: 16 weight rows x 8 input
// rows per instruction). Each warp owns 16 output neurons of one group;
// kWarps warps per block.
//
// Layout: a dot product does not care in which order it visits k, so thread
// (g, t) of a warp takes elements [8t, 8t + 8) of a 32-wide k chunk, for
// weight rows g and g + 8 and input row g, and feeds them to two mma steps
// as if they were the k columns {2t, 2t + 1, 2t + 8, 2t + 9} that the
// instruction's layout names. Weights and rows are then both read with
// plain, coalesced 16-byte accesses.
//
// Bandwidth: full speed needs more bytes in flight per SM than registers
// hold, so each thread's pieces go through a ring of shared-memory stages
// with cp.async (a thread reads back only what it copied itself: no
// barriers), kStages chunks ahead of the tensor cores. Weight copies ask L2
// to fetch the surrounding 256 bytes (.L2::256B): the next chunks of the
// same rows, which the warp asks for next. That hint took the H200 from
// about 65% to 97% of copy bandwidth (docs/PERFORMANCE.md). Rows of a
// length that is not a multiple of 8 take a plain register path instead.
constexpr int kWarps = 4;
constexpr int kTile = 16;  // neurons per warp (the mma's M)

template <int kMats, int kTiles>
struct Ring {
  static constexpr int kPieces = 2 * kMats + kTiles;  // 16-byte copies per thread per chunk
  static constexpr int kStageBytes = kPieces * 16 * 32;  // per warp
  static constexpr int kFit = 49152 / (kWarps * kStageBytes);  // static shared memory: 48 KB a block
  static constexpr int kStages = kFit > 8 ? 8 : kFit;
  static_assert(kStages >= 3, "too few chunks in flight");
};

__device__ inline void Mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// acc[m][i] += W_m[16 rows] . X[8 rows of tile i] for one 32-wide chunk:
// `w[m][0]`, `w[m][1]` are matrix m's pieces for rows g and g + 8, `x[i]`
// row tile i's piece; `tiles` of the kTiles hold rows.
template <int kMats, int kTiles>
__device__ inline void MmaChunk(const uint4 (&w)[kMats][2], const uint4 (&x)[kTiles], int tiles,
                                float (&acc)[kMats][kTiles][4]) {
#pragma unroll
  for (int m = 0; m < kMats; ++m) {
    // Step 0 takes words x, y of each piece; step 1 words z, w.
    const uint32_t s0[4] = {w[m][0].x, w[m][1].x, w[m][0].y, w[m][1].y};
    const uint32_t s1[4] = {w[m][0].z, w[m][1].z, w[m][0].w, w[m][1].w};
#pragma unroll
    for (int i = 0; i < kTiles; ++i) {
      if (i < tiles) {
        Mma(acc[m][i], s0, x[i].x, x[i].y);
        Mma(acc[m][i], s1, x[i].z, x[i].w);
      }
    }
  }
}

// Elements [k, k + 8) of a bf16 row of length `len` (any length), zero past
// the end or when !ok.
__device__ inline uint4 Load8Scalar(const uint16_t* row, bool ok, int k, int len) {
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint32_t lo = ok && k + 2 * i < len ? row[k + 2 * i] : 0;
    const uint32_t hi = ok && k + 2 * i + 1 < len ? row[k + 2 * i + 1] : 0;
    w[i] = lo | (hi << 16);
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// acc[m][i] += W_m[n0 .. n0 + 16) . X[8i .. 8i + 8) over all k, for kMats
// weight matrices sharing the input rows. `w[m]` point at row n0 of each
// matrix (rows from `n_valid` on read as zeros), `x` at the first input
// row, `nr` rows valid (1 or more). Vec: len % 8 == 0 and 16-byte aligned
// rows.
template <bool Vec, int kMats, int kTiles>
__device__ inline void MmaRows(const uint16_t* const* w, int n_valid, const uint16_t* x, int nr, int len,
                               float (&acc)[kMats][kTiles][4]) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  // Rows past the end point at a readable row and read as zeros.
  const bool w_ok[2] = {g < n_valid, g + 8 < n_valid};
  const uint16_t* wr[kMats][2];
#pragma unroll
  for (int m = 0; m < kMats; ++m) {
    wr[m][0] = w[m] + (w_ok[0] ? static_cast<size_t>(g) * len : 0);
    wr[m][1] = w[m] + (w_ok[1] ? static_cast<size_t>(g + 8) * len : 0);
  }
  bool x_ok[kTiles];
  const uint16_t* xr[kTiles];
#pragma unroll
  for (int i = 0; i < kTiles; ++i) {
    x_ok[i] = 8 * i + g < nr;
    xr[i] = x + (x_ok[i] ? static_cast<size_t>(8 * i + g) * len : 0);
  }
  const int tiles = (nr + 7) / 8;
  const int chunks = (len + 31) / 32;
  if constexpr (Vec) {
    using R = Ring<kMats, kTiles>;
    __shared__ uint4 ring[kWarps][R::kStages][R::kPieces][32];
    uint4(*mine)[R::kPieces][32] = ring[threadIdx.x >> 5];
    // Chunk c into stage c % kStages; an empty group past the end keeps the
    // number of groups in flight the same every step.
    auto issue = [&](int c) {
      if (c < chunks) {
        const int k = 32 * c + 8 * t;
        const bool in = k < len;
        uint4* st = &mine[c % R::kStages][0][lane];
#pragma unroll
        for (int m = 0; m < kMats; ++m) {
          CpAsync16<true>(st + (2 * m) * 32, wr[m][0] + (in ? k : 0), in && w_ok[0]);
          CpAsync16<true>(st + (2 * m + 1) * 32, wr[m][1] + (in ? k : 0), in && w_ok[1]);
        }
#pragma unroll
        for (int i = 0; i < kTiles; ++i) {
          CpAsync16<false>(st + (2 * kMats + i) * 32, xr[i] + (in ? k : 0), in && x_ok[i]);
        }
      }
      CpAsyncCommit();
    };
#pragma unroll
    for (int c = 0; c < R::kStages - 1; ++c) issue(c);
    for (int c = 0; c < chunks; ++c) {
      issue(c + R::kStages - 1);
      CpAsyncWait<R::kStages - 1>();  // chunk c has landed
      const uint4* st = &mine[c % R::kStages][0][lane];
      uint4 wp[kMats][2], xp[kTiles];
#pragma unroll
      for (int m = 0; m < kMats; ++m) {
        wp[m][0] = st[(2 * m) * 32];
        wp[m][1] = st[(2 * m + 1) * 32];
      }
#pragma unroll
      for (int i = 0; i < kTiles; ++i) xp[i] = st[(2 * kMats + i) * 32];
      MmaChunk<kMats, kTiles>(wp, xp, tiles, acc);
    }
    CpAsyncWait<0>();
  } else {
    for (int c = 0; c < chunks; ++c) {
      const int k = 32 * c + 8 * t;
      uint4 wp[kMats][2], xp[kTiles];
#pragma unroll
      for (int m = 0; m < kMats; ++m) {
        wp[m][0] = Load8Scalar(wr[m][0], w_ok[0], k, len);
        wp[m][1] = Load8Scalar(wr[m][1], w_ok[1], k, len);
      }
#pragma unroll
      for (int i = 0; i < kTiles; ++i) xp[i] = Load8Scalar(xr[i], x_ok[i], k, len);
      MmaChunk<kMats, kTiles>(wp, xp, tiles, acc);
    }
  }
}

__device__ inline float Silu(float v) { return v / (1.f + __expf(-v)); }

// act[r, j] = silu(gate_j . x_r) * (up_j . x_r) in bf16, for the groups with
// fewer than `max_rows` rows (blockIdx.y is the group).
template <bool Vec, int kTiles>
__global__ void __launch_bounds__(32 * kWarps) GateUpKernel(const ExpertFfnGroup* __restrict__ groups, int max_rows,
                                                           const uint16_t* __restrict__ x, int hidden,
                                                           int intermediate, __nv_bfloat16* __restrict__ act) {
  const ExpertFfnGroup grp = groups[blockIdx.y];
  const int n0 = (blockIdx.x * kWarps + (threadIdx.x >> 5)) * kTile;
  if (grp.num_rows == 0 || grp.num_rows >= max_rows || n0 >= intermediate) return;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const uint16_t* w[2] = {grp.gate + static_cast<size_t>(n0) * hidden, grp.up + static_cast<size_t>(n0) * hidden};
  for (int r0 = 0; r0 < grp.num_rows; r0 += 8 * kTiles) {
    const int nr = min(8 * kTiles, grp.num_rows - r0);
    float acc[2][kTiles][4] = {};
    MmaRows<Vec, 2, kTiles>(w, intermediate - n0, x + static_cast<size_t>(grp.row_offset + r0) * hidden, nr, hidden, acc);
#pragma unroll
    for (int i = 0; i < kTiles; ++i) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int n = n0 + g + (c >= 2 ? 8 : 0), r = 8 * i + 2 * t + (c & 1);
        if (n < intermediate && r < nr) {
          act[static_cast<size_t>(grp.row_offset + r0 + r) * intermediate + n] =
              __float2bfloat16(Silu(acc[0][i][c]) * acc[1][i][c]);
        }
      }
    }
  }
}

// out[r, d] = row_weight[r] * (down_d . act_r) in fp32, for the same groups.
template <bool Vec, int kTiles>
__global__ void __launch_bounds__(32 * kWarps) DownKernel(const ExpertFfnGroup* __restrict__ groups, int max_rows,
                                                         const uint16_t* __restrict__ act,
                                                         const float* __restrict__ row_weight, int hidden,
                                                         int intermediate, float* __restrict__ out) {
  const ExpertFfnGroup grp = groups[blockIdx.y];
  const int n0 = (blockIdx.x * kWarps + (threadIdx.x >> 5)) * kTile;
  if (grp.num_rows == 0 || grp.num_rows >= max_rows || n0 >= hidden) return;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const uint16_t* w[1] = {grp.down + static_cast<size_t>(n0) * intermediate};
  for (int r0 = 0; r0 < grp.num_rows; r0 += 8 * kTiles) {
    const int nr = min(8 * kTiles, grp.num_rows - r0);
    float acc[1][kTiles][4] = {};
    MmaRows<Vec, 1, kTiles>(w, hidden - n0, act + static_cast<size_t>(grp.row_offset + r0) * intermediate, nr,
                    intermediate, acc);
#pragma unroll
    for (int i = 0; i < kTiles; ++i) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int n = n0 + g + (c >= 2 ? 8 : 0), r = 8 * i + 2 * t + (c & 1);
        if (n < hidden && r < nr) {
          const size_t row = static_cast<size_t>(grp.row_offset + r0 + r);
          out[row * hidden + n] = row_weight[row] * acc[0][i][c];
        }
      }
    }
  }
}

// The large-batch path between its two GEMMs, for the rows of one group:
// act[r, j] = row_weight[r] * silu(gu[r, j]) * gu[r, intermediate + j]. The
// row weight goes in here because the down GEMM is linear in its input.
// One row, by the block's threads: `in` is its gate then up products.
__device__ inline void SwigluRow(const __nv_bfloat16* __restrict__ in, float w, int intermediate,
                                 __nv_bfloat16* __restrict__ o) {
  for (int j = threadIdx.x; j < intermediate; j += blockDim.x) {
    o[j] = __float2bfloat16(w * Silu(__bfloat162float(in[j])) * __bfloat162float(in[intermediate + j]));
  }
}
__global__ void SwigluKernel(const __nv_bfloat16* __restrict__ gu, const float* __restrict__ row_weight, int rows,
                             int intermediate, __nv_bfloat16* __restrict__ act) {
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    SwigluRow(gu + static_cast<size_t>(r) * 2 * intermediate, row_weight[r], intermediate,
              act + static_cast<size_t>(r) * intermediate);
  }
}

// One large group in the padded layout of the batched GEMMs: its rows are
// rows [row_offset, + num_rows) of the input and output, and rows
// [padded_offset, + num_rows) of the intermediate buffers.
struct PaddedGroup {
  long long padded_offset;
  int row_offset, num_rows;
};

// SwigluKernel for every padded group at once: group blockIdx.y, rows
// strided over blockIdx.x.
__global__ void PaddedSwigluKernel(const PaddedGroup* __restrict__ groups, const __nv_bfloat16* __restrict__ gu,
                                   const float* __restrict__ row_weight, int intermediate,
                                   __nv_bfloat16* __restrict__ act) {
  const PaddedGroup g = groups[blockIdx.y];
  for (int r = blockIdx.x; r < g.num_rows; r += gridDim.x) {
    const size_t row = g.padded_offset + r;
    SwigluRow(gu + row * 2 * intermediate, row_weight[g.row_offset + r], intermediate, act + row * intermediate);
  }
}

// The down products' real rows, from the padded layout to the output.
__global__ void UnpadKernel(const PaddedGroup* __restrict__ groups, const float4* __restrict__ down, int hidden4,
                            float4* __restrict__ out) {
  const PaddedGroup g = groups[blockIdx.y];
  for (int r = blockIdx.x; r < g.num_rows; r += gridDim.x) {
    const float4* in = down + (g.padded_offset + r) * hidden4;
    float4* o = out + (static_cast<size_t>(g.row_offset) + r) * hidden4;
    for (int j = threadIdx.x; j < hidden4; j += blockDim.x) o[j] = in[j];
  }
}

// x_bf16[r] = bf16(x[gather[r]]), one row per block.
__global__ void GatherBf16Kernel(const float* __restrict__ x, const int* __restrict__ gather, int width,
                                 __nv_bfloat16* __restrict__ out) {
  const float* in = x + static_cast<size_t>(gather[blockIdx.x]) * width;
  __nv_bfloat16* o = out + static_cast<size_t>(blockIdx.x) * width;
  for (int j = threadIdx.x; j < width; j += blockDim.x) o[j] = __float2bfloat16(in[j]);
}

// Launches the decode kernels with the fewest row tiles that hold the
// largest group they take.
template <bool Vec>
absl::Status LaunchDecode(const ExpertFfnGroup* table, unsigned num_groups, int max_rows, int largest,
                          const uint16_t* x, int hidden, int intermediate, __nv_bfloat16* act, const float* row_weight,
                          float* out, cudaStream_t s, bool gate_up) {
  const int per_block = kWarps * kTile;
  const int n = gate_up ? intermediate : hidden;
  const dim3 grid((n + per_block - 1) / per_block, num_groups), block(32 * kWarps);
  auto launch = [&](auto tiles) {
    constexpr int kTiles = decltype(tiles)::value;
    if (gate_up) {
      GateUpKernel<Vec, kTiles><<<grid, block, 0, s>>>(table, max_rows, x, hidden, intermediate, act);
    } else {
      DownKernel<Vec, kTiles><<<grid, block, 0, s>>>(table, max_rows, reinterpret_cast<const uint16_t*>(act),
                                                      row_weight, hidden, intermediate, out);
    }
  };
  if (largest <= 8) {
    launch(std::integral_constant<int, 1>());
  } else if (largest <= 16) {
    launch(std::integral_constant<int, 2>());
  } else {
    launch(std::integral_constant<int, 4>());
  }
  return LaunchStatus(gate_up ? "GateUpKernel" : "DownKernel");
}

// C[rows, m] (row-major, leading dimension ldc) = X[rows, k] . W[m, k]^T:
// in cuBLAS's column-major terms C^T = W . X^T, W read transposed.
absl::Status Gemm(const CublasApi& api, cublasHandle_t h, const uint16_t* w, int m, int k, const void* x, int rows,
                  void* c, int ldc, cudaDataType_t c_type) {
  const float one = 1.f, zero = 0.f;
  return api.Check(api.gemm_ex(h, CUBLAS_OP_T, CUBLAS_OP_N, m, rows, k, &one, w, CUDA_R_16BF, k, x, CUDA_R_16BF, k,
                               &zero, c, c_type, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                   "cublasGemmEx");
}

}  // namespace

// Streams for the GEMM path: one group's GEMMs fill the GPU only when it
// has many rows, so groups take turns over a few streams, each with its own
// cuBLAS handle (a handle's workspace is not to be shared between streams
// that run at once), forked from and joined back to the caller's stream.
struct CudaExpertFfn::GemmStreams {
  explicit GemmStreams(int n) : count(n), streams(n), handles(n), joins(n) {}
  const int count;
  const CublasApi* api = nullptr;
  std::vector<cudaStream_t> streams;
  std::vector<cublasHandle_t> handles;
  cudaEvent_t fork = nullptr;
  std::vector<cudaEvent_t> joins;
  ~GemmStreams() {
    for (int i = 0; i < count; ++i) {
      if (handles[i] != nullptr) api->destroy(handles[i]);
      if (streams[i] != nullptr) cudaStreamDestroy(streams[i]);
      if (joins[i] != nullptr) cudaEventDestroy(joins[i]);
    }
    if (fork != nullptr) cudaEventDestroy(fork);
  }
  absl::Status Init() {
    MM_ASSIGN_OR_RETURN(api, LoadCublas());
    if (absl::Status st = CudaStatus(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming), "cudaEventCreate");
        !st.ok()) {
      return st;
    }
    for (int i = 0; i < count; ++i) {
      if (absl::Status st = CudaStatus(cudaStreamCreateWithFlags(&streams[i], cudaStreamNonBlocking),
                                       "cudaStreamCreate");
          !st.ok()) {
        return st;
      }
      if (absl::Status st = CudaStatus(cudaEventCreateWithFlags(&joins[i], cudaEventDisableTiming), "cudaEventCreate");
          !st.ok()) {
        return st;
      }
      MM_RETURN_IF_ERROR(api->Check(api->create(&handles[i]), "cublasCreate"));
      MM_RETURN_IF_ERROR(api->Check(api->set_stream(handles[i], streams[i]), "cublasSetStream"));
    }
    return absl::OkStatus();
  }
};

absl::StatusOr<std::unique_ptr<CudaExpertFfn>> CudaExpertFfn::Create(int hidden, int intermediate,
                                                                     const Options& options) {
  if (hidden <= 0 || intermediate <= 0) {
    return absl::InvalidArgumentError("CudaExpertFfn: hidden and intermediate sizes must be positive");
  }
  return std::unique_ptr<CudaExpertFfn>(new CudaExpertFfn(hidden, intermediate, options));
}

CudaExpertFfn::CudaExpertFfn(int hidden, int intermediate, const Options& options)
    : hidden_(hidden), intermediate_(intermediate), options_(options) {}

CudaExpertFfn::~CudaExpertFfn() = default;

absl::Status CudaExpertFfn::Reserve(size_t rows, size_t groups) {
  // The batched GEMMs read up to kPadRows - 1 rows past a group (whatever
  // is there: a GEMM's output row depends on its input row alone, and
  // padded rows are never copied out) and keep their intermediates in a
  // padded layout.
  rows += kPadRows * groups;
  if (rows > rows_reserved_) {
    rows = std::max(rows, 2 * rows_reserved_);  // room to grow
    // Freed first (the old and new buffers need not fit together), and
    // marked gone, so that a failed allocation leaves nothing half-made.
    x_bf16_.reset();
    act_.reset();
    gate_up_.reset();
    rows_reserved_ = 0;
    auto x = DeviceBuffer::Allocate(rows * hidden_ * 2);
    if (!x.ok()) return x.status();
    auto act = DeviceBuffer::Allocate(rows * intermediate_ * 2);
    if (!act.ok()) return act.status();
    auto gu = DeviceBuffer::Allocate(rows * intermediate_ * 4);
    if (!gu.ok()) return gu.status();
    x_bf16_ = std::move(*x);
    act_ = std::move(*act);
    gate_up_ = std::move(*gu);
    rows_reserved_ = rows;
  }
  if (groups > groups_reserved_) {
    groups = std::max(groups, 2 * groups_reserved_);
    table_.reset();
    groups_reserved_ = 0;
    auto t = DeviceBuffer::Allocate(groups * sizeof(ExpertFfnGroup));
    if (!t.ok()) return t.status();
    table_ = std::move(*t);
    groups_reserved_ = groups;
  }
  return absl::OkStatus();
}

absl::Status CudaExpertFfn::Run(const float* x, const float* row_weight, const std::vector<ExpertFfnGroup>& groups,
                                float* out, CudaStream stream) {
  size_t rows = 0;
  for (const ExpertFfnGroup& g : groups) {
    if (g.num_rows < 0 || g.row_offset < 0) return absl::InvalidArgumentError("CudaExpertFfn: bad group rows");
    if (g.num_rows == 0) continue;
    if (g.gate == nullptr || g.up == nullptr || g.down == nullptr) {
      return absl::InvalidArgumentError("CudaExpertFfn: a group with rows has no weights");
    }
    rows = std::max(rows, static_cast<size_t>(g.row_offset) + g.num_rows);
  }
  if (rows == 0) return absl::OkStatus();
  // The decode kernels take a group per block row (gridDim.y).
  if (groups.size() > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("CudaExpertFfn: ", groups.size(), " groups in one call; at most 65535"));
  }
  // Where the grouped GEMM runs, it takes over from the decode kernel at
  // fewer rows than cuBLAS does.
  if (options_.grouped_gemm && !grouped_checked_) {
    grouped_checked_ = true;
    if (CudaGroupedGemm::Supported(hidden_, intermediate_)) {
      auto g = CudaGroupedGemm::Create(hidden_, intermediate_);
      if (g.ok()) grouped_ = std::move(*g);  // else cuBLAS, as on other GPUs
    }
  }
  const int min_rows = grouped_ != nullptr ? options_.grouped_min_rows : options_.gemm_min_rows;
  int largest_small = 0;
  bool large = false;
  for (const ExpertFfnGroup& g : groups) {
    if (g.num_rows == 0) continue;
    if (g.num_rows >= min_rows) {
      large = true;
    } else {
      largest_small = std::max(largest_small, g.num_rows);
    }
  }
  if (absl::Status st = Reserve(rows, groups.size()); !st.ok()) return st;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  MM_RETURN_IF_ERROR(ToBf16Cuda(x, rows * hidden_, x_bf16_->as<uint16_t>(), stream));
  if (largest_small > 0) {
    // The decode kernels read the group table; stream-ordered after the
    // previous call's kernels, which read it too.
    MM_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpyAsync(table_->data(), groups.data(), groups.size() * sizeof(groups[0]), cudaMemcpyHostToDevice, s),
        "cudaMemcpyAsync"));
    const auto* table = table_->as<ExpertFfnGroup>();
    const unsigned ng = static_cast<unsigned>(groups.size());
    const int max_rows = min_rows;
    auto* act = act_->as<__nv_bfloat16>();
    const auto* xb = x_bf16_->as<uint16_t>();
    // 16-byte loads need rows of a multiple of 8 elements (and aligned
    // bases, which cudaMalloc gives).
    const bool vec_in = hidden_ % 8 == 0, vec_act = intermediate_ % 8 == 0;
    for (bool gate_up : {true, false}) {
      absl::Status st = (gate_up ? vec_in : vec_act)
                            ? LaunchDecode<true>(table, ng, max_rows, largest_small, xb, hidden_, intermediate_, act,
                                                 row_weight, out, s, gate_up)
                            : LaunchDecode<false>(table, ng, max_rows, largest_small, xb, hidden_, intermediate_, act,
                                                  row_weight, out, s, gate_up);
      if (!st.ok()) return st;
    }
  }
  if (large) return RunGemms(groups, min_rows, row_weight, out, stream);
  return absl::OkStatus();
}

absl::Status CudaExpertFfn::RunGathered(const float* x, const int* gather, const float* row_weight,
                                        const ExpertFfnGroup* groups, int num_groups, int rows, int max_group_rows,
                                        float* out, CudaStream stream) {
  if (rows < 0 || num_groups < 0 || num_groups > 65535 || max_group_rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat("CudaExpertFfn::RunGathered: ", rows, " rows, ", num_groups,
                                                   " groups (at most 65535), groups of ", max_group_rows));
  }
  if (rows == 0 || num_groups == 0) return absl::OkStatus();
  MM_RETURN_IF_ERROR(Reserve(rows, num_groups));
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  auto* xb = x_bf16_->as<__nv_bfloat16>();
  if (gather == nullptr) {
    MM_RETURN_IF_ERROR(ToBf16Cuda(x, static_cast<size_t>(rows) * hidden_, x_bf16_->as<uint16_t>(), stream));
  } else {
    GatherBf16Kernel<<<static_cast<unsigned>(rows), 256, 0, s>>>(x, gather, hidden_, xb);
    MM_RETURN_IF_ERROR(LaunchStatus("GatherBf16Kernel"));
  }
  auto* act = act_->as<__nv_bfloat16>();
  const auto* xin = reinterpret_cast<const uint16_t*>(xb);
  const bool vec_in = hidden_ % 8 == 0, vec_act = intermediate_ % 8 == 0;
  // Every group, whatever its rows, in the decode kernels (no row limit).
  constexpr int kAnyRows = std::numeric_limits<int>::max();
  const unsigned ng = static_cast<unsigned>(num_groups);
  const int largest = std::max(max_group_rows, 1);
  for (bool gate_up : {true, false}) {
    MM_RETURN_IF_ERROR((gate_up ? vec_in : vec_act)
                           ? LaunchDecode<true>(groups, ng, kAnyRows, largest, xin, hidden_, intermediate_, act,
                                                row_weight, out, s, gate_up)
                           : LaunchDecode<false>(groups, ng, kAnyRows, largest, xin, hidden_, intermediate_, act,
                                                 row_weight, out, s, gate_up));
  }
  return absl::OkStatus();
}

bool CudaExpertFfn::CublasBatches(const ExpertFfnGroup& g) const {
  return g.num_rows < kBatchMaxRows && g.up == g.gate + static_cast<size_t>(intermediate_) * hidden_;
}

absl::Status CudaExpertFfn::RunGemms(const std::vector<ExpertFfnGroup>& groups, int min_rows, const float* row_weight,
                                     float* out, CudaStream stream) {
  if (grouped_ == nullptr) return RunCublas(groups, min_rows, row_weight, out, stream);
  // Groups up to grouped_max_rows rows in the grouped GEMM, larger ones on
  // cuBLAS, unless too few of those would go in cuBLAS's batched calls.
  const auto batched = std::count_if(groups.begin(), groups.end(), [&](const ExpertFfnGroup& g) {
    return g.num_rows > options_.grouped_max_rows && CublasBatches(g);
  });
  const int limit = batched < kBatchMinGroups
                        ? std::max(options_.grouped_max_rows, options_.grouped_max_rows_few_groups)
                        : options_.grouped_max_rows;
  std::vector<ExpertFfnGroup> mine, rest;
  for (const ExpertFfnGroup& g : groups) {
    if (g.num_rows <= 0 || g.num_rows < min_rows) continue;
    (g.num_rows <= limit ? mine : rest).push_back(g);
  }
  // The grouped GEMM writes `act` at its groups' own rows, cuBLAS's groups
  // use it from row 0: cuBLAS's streams fork after the grouped launches,
  // so the two never overlap (running them side by side would race).
  MM_RETURN_IF_ERROR(grouped_->Run(x_bf16_->as<uint16_t>(), row_weight, mine, act_->as<uint16_t>(), out, stream));
  return rest.empty() ? absl::OkStatus() : RunCublas(rest, min_rows, row_weight, out, stream);
}

absl::Status CudaExpertFfn::RunCublas(const std::vector<ExpertFfnGroup>& groups, int min_rows, const float* row_weight,
                                      float* out, CudaStream stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (gemm_ == nullptr) {
    auto g = std::make_unique<GemmStreams>(std::max(options_.gemm_streams, 1));
    if (absl::Status st = g->Init(); !st.ok()) return st;
    gemm_ = std::move(g);
  }
  GemmStreams& gs = *gemm_;
  // Fork: every GEMM stream waits for what the caller's stream has queued
  // (the bf16 rows); join: the caller's stream waits for every GEMM stream.
  if (absl::Status st = CudaStatus(cudaEventRecord(gs.fork, s), "cudaEventRecord"); !st.ok()) return st;
  for (int i = 0; i < gs.count; ++i) {
    MM_RETURN_IF_ERROR(CudaStatus(cudaStreamWaitEvent(gs.streams[i], gs.fork, 0), "cudaStreamWaitEvent"));
  }
  const int in = intermediate_, hd = hidden_;
  const auto* xb = x_bf16_->as<uint16_t>();
  auto* gu = gate_up_->as<uint16_t>();
  auto* act = act_->as<uint16_t>();
  // Every large group gets rows of the intermediates. Those whose gate and
  // up are one [2 * intermediate, hidden] matrix run as batched GEMMs, one
  // call per row count rounded up to kPadRows; the others one by one.
  std::vector<PaddedGroup> padded;
  std::vector<const ExpertFfnGroup*> padded_src;
  std::map<int, std::vector<size_t>> buckets;  // padded rows -> indices into `padded`
  std::vector<std::pair<const ExpertFfnGroup*, size_t>> singles;
  auto batchable = [&](const ExpertFfnGroup& g) {
    return g.num_rows > 0 && g.num_rows >= min_rows && CublasBatches(g);
  };
  const bool batch = std::count_if(groups.begin(), groups.end(), batchable) >= kBatchMinGroups;
  size_t next_row = 0;
  for (const ExpertFfnGroup& g : groups) {
    if (g.num_rows == 0 || g.num_rows < min_rows) continue;
    if (batch && batchable(g)) {
      const int rounded = (g.num_rows + kPadRows - 1) / kPadRows * kPadRows;
      buckets[rounded].push_back(padded.size());
      padded.push_back({static_cast<long long>(next_row), g.row_offset, g.num_rows});
      padded_src.push_back(&g);
      next_row += rounded;
    } else {
      singles.emplace_back(&g, next_row);
      next_row += g.num_rows;
    }
  }
  auto enqueue = [&]() -> absl::Status {
    int next = 0;
    if (!padded.empty()) {
      const int i = next++ % gs.count;
      cudaStream_t st = gs.streams[i];
      cublasHandle_t h = gs.handles[i];
      MM_RETURN_IF_ERROR(GrowBuffer(&down_, next_row * hd * sizeof(float)));
      float* down = down_->as<float>();
      // Per bucket, the six pointer arrays cuBLAS takes (gate_up, x, gu;
      // down, act, down rows), one after another; then the group table.
      std::vector<const void*> ptrs;
      std::vector<std::pair<int, int>> calls;  // (rows, groups)
      std::vector<size_t> bases;
      for (const auto& [rows, members] : buckets) {
        calls.emplace_back(rows, static_cast<int>(members.size()));
        bases.push_back(ptrs.size());
        for (int op = 0; op < 6; ++op) {
          for (size_t m : members) {
            const size_t at = static_cast<size_t>(padded[m].padded_offset);
            // Rows that fill whole pads go straight to the output.
            const bool exact = padded[m].num_rows % kPadRows == 0;
            const void* v[6] = {padded_src[m]->gate,
                                xb + static_cast<size_t>(padded[m].row_offset) * hd,
                                gu + at * 2 * in,
                                padded_src[m]->down,
                                act + at * in,
                                exact ? out + static_cast<size_t>(padded[m].row_offset) * hd : down + at * hd};
            ptrs.push_back(v[op]);
          }
        }
      }
      std::vector<PaddedGroup> unpad;
      for (const PaddedGroup& p : padded) {
        if (p.num_rows % kPadRows != 0) unpad.push_back(p);
      }
      const size_t table_bytes = ptrs.size() * sizeof(void*) + (padded.size() + unpad.size()) * sizeof(PaddedGroup);
      MM_RETURN_IF_ERROR(GrowBuffer(&batch_table_, table_bytes));  // waits for the last call's readers
      auto* d_ptrs = batch_table_->as<const void*>();
      auto* d_groups = reinterpret_cast<PaddedGroup*>(d_ptrs + ptrs.size());
      MM_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(d_ptrs, ptrs.data(), ptrs.size() * sizeof(void*),
                                                    cudaMemcpyHostToDevice, st),
                                    "cudaMemcpyAsync"));
      MM_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(d_groups, padded.data(), padded.size() * sizeof(PaddedGroup),
                                                    cudaMemcpyHostToDevice, st),
                                    "cudaMemcpyAsync"));
      PaddedGroup* d_unpad = d_groups + padded.size();
      MM_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(d_unpad, unpad.data(), unpad.size() * sizeof(PaddedGroup),
                                                    cudaMemcpyHostToDevice, st),
                                    "cudaMemcpyAsync"));
      const float one = 1.f, zero = 0.f;
      for (size_t c = 0; c < calls.size(); ++c) {
        const auto [rows, count] = calls[c];
        const void* const* a = d_ptrs + bases[c];
        MM_RETURN_IF_ERROR(gs.api->Check(
            gs.api->gemm_batched_ex(h, CUBLAS_OP_T, CUBLAS_OP_N, 2 * in, rows, hd, &one, a, CUDA_R_16BF, hd,
                                    a + count, CUDA_R_16BF, hd, &zero, const_cast<void* const*>(a + 2 * count),
                                    CUDA_R_16BF, 2 * in, count, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            "cublasGemmBatchedEx"));
      }
      const unsigned row_blocks = static_cast<unsigned>(std::min(calls.back().first, 32));
      PaddedSwigluKernel<<<dim3(row_blocks, static_cast<unsigned>(padded.size())), 256, 0, st>>>(
          d_groups, reinterpret_cast<const __nv_bfloat16*>(gu), row_weight, in, reinterpret_cast<__nv_bfloat16*>(act));
      MM_RETURN_IF_ERROR(LaunchStatus("PaddedSwigluKernel"));
      for (size_t c = 0; c < calls.size(); ++c) {
        const auto [rows, count] = calls[c];
        const void* const* a = d_ptrs + bases[c] + 3 * count;
        MM_RETURN_IF_ERROR(gs.api->Check(
            gs.api->gemm_batched_ex(h, CUBLAS_OP_T, CUBLAS_OP_N, hd, rows, in, &one, a, CUDA_R_16BF, in, a + count,
                                    CUDA_R_16BF, in, &zero, const_cast<void* const*>(a + 2 * count), CUDA_R_32F, hd,
                                    count, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            "cublasGemmBatchedEx"));
      }
      if (!unpad.empty() && hd % 4 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0) {
        UnpadKernel<<<dim3(row_blocks, static_cast<unsigned>(unpad.size())), 256, 0, st>>>(
            d_unpad, reinterpret_cast<const float4*>(down), hd / 4, reinterpret_cast<float4*>(out));
        MM_RETURN_IF_ERROR(LaunchStatus("UnpadKernel"));
      } else {
        for (const PaddedGroup& p : unpad) {
          MM_RETURN_IF_ERROR(CopyRowsOnDevice(down + static_cast<size_t>(p.padded_offset) * hd, hd,
                                              out + static_cast<size_t>(p.row_offset) * hd, hd, p.num_rows, hd, st));
        }
      }
    }
    for (const auto& [gp, at] : singles) {
      const ExpertFfnGroup& g = *gp;
      const int i = next++ % gs.count;
      cublasHandle_t h = gs.handles[i];
      const size_t o = g.row_offset;
      const void* xg = xb + o * hd;
      uint16_t* c = gu + at * 2 * in;
      if (g.up == g.gate + static_cast<size_t>(in) * hd) {  // one GEMM for both
        MM_RETURN_IF_ERROR(Gemm(*gs.api, h, g.gate, 2 * in, hd, xg, g.num_rows, c, 2 * in, CUDA_R_16BF));
      } else {
        MM_RETURN_IF_ERROR(Gemm(*gs.api, h, g.gate, in, hd, xg, g.num_rows, c, 2 * in, CUDA_R_16BF));
        MM_RETURN_IF_ERROR(Gemm(*gs.api, h, g.up, in, hd, xg, g.num_rows, c + in, 2 * in, CUDA_R_16BF));
      }
      SwigluKernel<<<static_cast<unsigned>(std::min(g.num_rows, 1024)), 256, 0, gs.streams[i]>>>(
          reinterpret_cast<const __nv_bfloat16*>(c), row_weight + o, g.num_rows, in,
          reinterpret_cast<__nv_bfloat16*>(act + at * in));
      MM_RETURN_IF_ERROR(LaunchStatus("SwigluKernel"));
      MM_RETURN_IF_ERROR(Gemm(*gs.api, h, g.down, hd, in, act + at * in, g.num_rows, out + o * hd, hd, CUDA_R_32F));
    }
    return absl::OkStatus();
  };
  const absl::Status status = enqueue();
  // Join even after an error, so that the caller's stream never runs ahead
  // of work already queued.
  absl::Status join;
  for (int i = 0; i < gs.count; ++i) {
    join.Update(CudaStatus(cudaEventRecord(gs.joins[i], gs.streams[i]), "cudaEventRecord"));
    join.Update(CudaStatus(cudaStreamWaitEvent(s, gs.joins[i], 0), "cudaStreamWaitEvent"));
  }
  return status.ok() ? join : status;
}

}  // namespace moemesh
