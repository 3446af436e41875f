#include "core/kernels/cuda/grouped_gemm.h"

#include <cuda.h>
#include <cuda_bf16.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <cstring>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/kernels/cuda/cuda_check.cuh"
#include "core/kernels/cuda/wgmma.cuh"

namespace moemesh {
namespace {

// A block is three warpgroups: one issues the TMA loads (one thread of
// it), two multiply. Weights are the wgmma's M side and up to 128 of a
// group's rows its N (rounded up to 16), so each weight is read once for
// them, and rounding wastes little (rows as M would round up to 64). Each
// multiplying warpgroup owns two 64-row sub-tiles of weights against the
// same rows: for SwiGLU, the gate and up rows of the same 64 neurons, so
// that each thread holds both products of its neurons; for the down
// product, 128 consecutive outputs. Two sub-tiles per warpgroup also halve
// the token bytes per weight byte, and L2, which serves the tokens besides
// passing the weights through, is the busier unit (docs/PERFORMANCE.md).
constexpr int kMaxStages = 8;
constexpr int kBlockK = 64;     // bf16: 128 bytes, one row of the 128-byte swizzle
constexpr int kTileRows = 128;  // a group's rows per block (wgmma's N, at most)
constexpr int kBoxRows = 64;    // rows per TMA box
constexpr int kBoxBytes = kBoxRows * kBlockK * 2;
constexpr int kABoxes = 4;      // weight boxes per stage: two warpgroups' two sub-tiles
constexpr int kThreads = 384;

constexpr int kSmemLimit = 227 * 1024;  // Hopper's largest opt-in block (the ring, below)
constexpr int kBarrierBytes = 2 * kMaxStages * 8;
// Each multiplying warpgroup's copy of its tile's row weights (SwiGLU).
constexpr int kRowWeightBytes = 2 * kTileRows * 4;
// A ring of one stage would deadlock: the loader refills a stage only once
// the multipliers are done with the one before.
static_assert((kSmemLimit - 1024 - kBarrierBytes - kRowWeightBytes) / ((kABoxes + kTileRows / kBoxRows) * kBoxBytes) >= 2,
              "the ring holds at least two of the largest stages");
// setmaxnreg: the loader's warpgroup gives up registers for the multipliers'
// (40 + 2 * 232 per thread of a warpgroup), within the 168 a thread that
// __launch_bounds__(384, 1) allows.
constexpr int kLoaderRegs = 40, kMultiplierRegs = 232;
static_assert(kLoaderRegs + 2 * kMultiplierRegs <= 3 * (65536 / kThreads / 8 * 8), "register budget");

// One group in a launch's table: its weight matrices (gate and up, or down
// twice), its rows and its first block.
struct GroupEntry {
  CUtensorMap a[2];
  int row_offset, num_rows, first_tile, pad;
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
constexpr int kWgRows = 64;  // wgmma's M

// Shared memory is a ring of stages, each kABoxes weight boxes and the
// launch's largest tile's token boxes (1 or 2), as many as fit (up to
// kMaxStages). Then the stages' barriers, then the row weights.
struct Ring {
  uint8_t* base;
  uint64_t* bars;
  float* row_weights;  // kTileRows per multiplying warpgroup
  int stages, stage_bytes;
  // Weight box i of stage st: warpgroup c's sub-tile m is box 2c + m.
  __device__ uint8_t* a(int st, int i) const { return base + st * stage_bytes + i * kBoxBytes; }
  __device__ uint8_t* b(int st) const { return base + st * stage_bytes + kABoxes * kBoxBytes; }
  __device__ uint64_t* full(int st) const { return bars + st; }
  __device__ uint64_t* empty(int st) const { return bars + kMaxStages + st; }
};

// A position in the ring: its stage and the parity of the stage's current
// round (the mbarrier phase to wait for), advanced without dividing.
struct RingPos {
  int st = 0;
  uint32_t phase = 0;
  __device__ void Advance(int stages) {
    if (++st == stages) {
      st = 0;
      phase ^= 1;
    }
  }
};

__device__ inline uint32_t SmemAddr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }
__device__ inline void BarInit(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(SmemAddr(bar)), "r"(count));
}
__device__ inline void BarExpectTx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(SmemAddr(bar)), "r"(bytes) : "memory");
}
__device__ inline void BarArrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(SmemAddr(bar)) : "memory");
}
__device__ inline void BarWait(uint64_t* bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(SmemAddr(bar)), "r"(parity)
        : "memory");
  } while (!done);
}
// A [kBoxRows, kBlockK] box at (k, row) of `map` into `dst`, 128-byte
// swizzled; completes on `bar`. Out-of-range elements read as zero.
__device__ inline void TmaLoad(void* dst, const CUtensorMap* map, uint64_t* bar, int k, int row) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n" ::
          "r"(SmemAddr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(SmemAddr(bar)), "r"(k), "r"(row)
      : "memory");
}
// The weights' descriptors come from a table in global memory, rewritten
// by the host between launches: the async proxy must not use a stale copy.
__device__ inline void AcquireTensorMap(const CUtensorMap* map) {
  asm volatile("fence.proxy.tensormap::generic.acquire.sys [%0], 128;\n" ::"l"(reinterpret_cast<uint64_t>(map))
               : "memory");
}
// The wgmma descriptor of a K-major, 128-byte-swizzled tile at `p`:
// 8-row core matrices 1024 bytes apart.
__device__ inline uint64_t Desc(const void* p) {
  return ((SmemAddr(p) & 0x3FFFF) >> 4) | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
}
template <int N>
__device__ inline void KeepInRegisters(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
// The fast division: its 2 ulp vanish in the bf16 result, and for large
// negative v it gives 0 (v / inf), as silu's limit.
__device__ inline float Silu(float v) { return __fdividef(v, 1.f + __expf(-v)); }
// Warpgroup c's barrier (ids 1, 2; 0 is __syncthreads).
__device__ inline void WarpgroupSync(int c) { asm volatile("bar.sync %0, 128;\n" ::"r"(1 + c) : "memory"); }

// One multiplying warpgroup's part of a block, N of the tile's `rows` rows
// (from `row0`) against its two sub-tiles of weights, the first from
// weight row `n0`: out[row0 + token, n0 + i] for SwiGLU (act, bf16) and
// out[row0 + token, n0 + 64m + i] for the down product (fp32). The ring's
// steps start at `pos`, which is left after them.
template <int N, bool kSwiglu>
__device__ void Consume(const Ring& ring, int c, RingPos& pos, int num_k, int row0, int rows, int n0, int n_total,
                        const float* __restrict__ row_weight, void* __restrict__ out) {
  const int t = threadIdx.x % 128, lane = t % 32;
  float* rw = ring.row_weights + kTileRows * c;
  if constexpr (kSwiglu) {
    // The tile's row weights into shared memory, landing while the
    // products run (the epilogue would otherwise wait on each load). The
    // barrier: every thread is done with the last tile's.
    WarpgroupSync(c);
    if (t < rows) {
      asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(SmemAddr(rw + t)), "l"(row_weight + row0 + t)
                   : "memory");
    }
    asm volatile("cp.async.commit_group;\n" ::: "memory");
  }
  float d[2][N / 2];
#pragma unroll
  for (int m = 0; m < 2; ++m) {
#pragma unroll
    for (int i = 0; i < N / 2; ++i) d[m][i] = 0.f;
  }
  // The loader may already be filling stages for the block's next tile.
  int last = 0;
  for (int s = 0; s < num_k; ++s) {
    BarWait(ring.full(pos.st), pos.phase);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int kk = 0; kk < kBlockK / 16; ++kk) {
      const uint64_t b = Desc(ring.b(pos.st) + 32 * kk);
#pragma unroll
      for (int m = 0; m < 2; ++m) Wgmma<N>(d[m], Desc(ring.a(pos.st, 2 * c + m) + 32 * kk), b);
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    // Stage s - 1's products are done: its buffers go back to the loader.
    asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
    KeepInRegisters(d[0]);
    KeepInRegisters(d[1]);
    if (s > 0 && lane == 0) BarArrive(ring.empty(last));
    last = pos.st;
    pos.Advance(ring.stages);
  }
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  KeepInRegisters(d[0]);
  KeepInRegisters(d[1]);
  if (lane == 0) BarArrive(ring.empty(last));
  if constexpr (kSwiglu) {
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    WarpgroupSync(c);
  }
  // Accumulator 4i + 2h + j of a sub-tile is its weight row 16w + g + 8h
  // against token 8i + 2q + j, for warp w and lane 4g + q.
  const int w = t / 32, g = lane / 4, q = lane % 4;
  const int row = n0 + 16 * w + g;  // the thread's first output column
  bool col_ok[2][2];
#pragma unroll
  for (int m = 0; m < 2; ++m) {
#pragma unroll
    for (int h = 0; h < 2; ++h) col_ok[m][h] = row + kWgRows * m + 8 * h < n_total;
  }
#pragma unroll
  for (int i = 0; i < N / 8; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int n = 8 * i + 2 * q + j;
      if (n >= rows) continue;
      const size_t at = static_cast<size_t>(row0 + n) * n_total + row;
      if constexpr (kSwiglu) {
        const float scale = rw[n];
        __nv_bfloat16* p = static_cast<__nv_bfloat16*>(out) + at;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = 4 * i + 2 * h + j;
          if (col_ok[0][h]) p[8 * h] = __float2bfloat16(scale * Silu(d[0][r]) * d[1][r]);
        }
      } else {
        float* p = static_cast<float*>(out) + at;
#pragma unroll
        for (int m = 0; m < 2; ++m) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            if (col_ok[m][h]) p[kWgRows * m + 8 * h] = d[m][4 * i + 2 * h + j];
          }
        }
      }
    }
  }
}
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// A tile: up to 128 of a group's rows from row0, against 128 of its
// neurons (SwiGLU) or 256 outputs (down) from n0.
struct Tile {
  const GroupEntry* grp;
  int row0, rows, n0;
};
template <bool kSwiglu>
__device__ inline Tile TileAt(const GroupEntry* __restrict__ groups, int num_groups, int tile) {
  int lo = 0, hi = num_groups - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (groups[mid].first_tile <= tile) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const GroupEntry& grp = groups[lo];
  const int token_tiles = (grp.num_rows + kTileRows - 1) / kTileRows;
  const int local = tile - grp.first_tile;
  // Token tiles innermost: neighbouring tiles share weights through L2.
  const int t0 = (local % token_tiles) * kTileRows;
  return {&grp, grp.row_offset + t0, min(kTileRows, grp.num_rows - t0),
          (local / token_tiles) * 2 * kTileRows / (kSwiglu ? 2 : 1)};
}

// A persistent kernel: block b takes tiles b, b + gridDim.x, ... of the
// launch's `tiles`, and its loader runs on into the next tile while the
// multiplying warpgroups store the last one. `x_map` is the tokens' [rows,
// k] matrix; the output has n_total columns. The ring's stages are
// `stage_boxes` boxes.
template <bool kSwiglu>
__global__ void __launch_bounds__(kThreads, 1)
    GroupedGemmKernel(const __grid_constant__ CUtensorMap x_map, const GroupEntry* __restrict__ groups,
                      int num_groups, int tiles, int k, int n_total, int stage_boxes, int stages,
                      const float* __restrict__ row_weight, void* __restrict__ out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ uint8_t raw[];
  const int num_k = (k + kBlockK - 1) / kBlockK;
  Ring ring;
  ring.base = raw + ((1024 - (SmemAddr(raw) & 1023)) & 1023);
  ring.stages = stages;
  ring.stage_bytes = stage_boxes * kBoxBytes;
  ring.bars = reinterpret_cast<uint64_t*>(ring.base + stages * ring.stage_bytes);
  ring.row_weights = reinterpret_cast<float*>(ring.bars + 2 * kMaxStages);
  if (threadIdx.x == 0) {
    for (int s = 0; s < stages; ++s) {
      BarInit(ring.full(s), 1);
      BarInit(ring.empty(s), 8);  // the multiplying warps
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  // Warpgroup c's first weight row: SwiGLU's take 64 neurons each (gate
  // and up), down's 128 outputs each.
  auto wg_n0 = [](const Tile& t, int c) { return t.n0 + (kSwiglu ? 1 : 2) * kWgRows * c; };
  auto n16_of = [](const Tile& t) { return (t.rows + 15) / 16; };
  const int wg = threadIdx.x / 128;
  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kLoaderRegs));
    if (threadIdx.x != 0) return;
    RingPos pos;
    for (int tile = blockIdx.x, it = 0; tile < tiles; tile += gridDim.x) {
      const Tile t = TileAt<kSwiglu>(groups, num_groups, tile);
      const int boxes = (16 * n16_of(t) + kBoxRows - 1) / kBoxRows;
      AcquireTensorMap(&t.grp->a[0]);
      AcquireTensorMap(&t.grp->a[1]);
      for (int s = 0; s < num_k; ++s, ++it, pos.Advance(stages)) {
        const int st = pos.st;
        // From the second round on, wait until the multipliers have
        // released the stage's last round.
        if (it >= stages) BarWait(ring.empty(st), pos.phase ^ 1);
        BarExpectTx(ring.full(st), (kABoxes + boxes) * kBoxBytes);
        for (int c = 0; c < 2; ++c) {
          for (int m = 0; m < 2; ++m) {
            // SwiGLU: gate then up rows of the same neurons; down: two
            // consecutive sub-tiles.
            const CUtensorMap* map = &t.grp->a[kSwiglu ? m : 0];
            TmaLoad(ring.a(st, 2 * c + m), map, ring.full(st), s * kBlockK, wg_n0(t, c) + (kSwiglu ? 0 : kWgRows * m));
          }
        }
        for (int i = 0; i < boxes; ++i) {
          TmaLoad(ring.b(st) + i * kBoxBytes, &x_map, ring.full(st), s * kBlockK, t.row0 + kBoxRows * i);
        }
      }
    }
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kMultiplierRegs));
  const int c = wg - 1;
  RingPos pos;
  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const Tile t = TileAt<kSwiglu>(groups, num_groups, tile);
    switch (n16_of(t)) {
#define MM_CONSUME(n)                                                                                           \
  case n:                                                                                                       \
    Consume<16 * n, kSwiglu>(ring, c, pos, num_k, t.row0, t.rows, wg_n0(t, c), n_total, row_weight, out); \
    break;
      MM_CONSUME(1) MM_CONSUME(2) MM_CONSUME(3) MM_CONSUME(4) MM_CONSUME(5) MM_CONSUME(6) MM_CONSUME(7) MM_CONSUME(8)
#undef MM_CONSUME
    }
  }
#else
  __trap();  // built without sm_90a; Supported() keeps launches away
#endif
}

// cuTensorMapEncodeTiled, from the driver through the runtime (moemesh
// does not link libcuda).
PFN_cuTensorMapEncodeTiled_v12000 Encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return static_cast<PFN_cuTensorMapEncodeTiled_v12000>(nullptr);
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// The TMA descriptor of a row-major bf16 [rows, cols] matrix, read in
// kBoxRows x kBlockK boxes with the 128-byte swizzle.
absl::StatusOr<CUtensorMap> EncodeMap(const void* base, uint64_t rows, uint64_t cols) {
  CUtensorMap map;
  const cuuint64_t dims[2] = {cols, rows};
  const cuuint64_t strides[1] = {cols * 2};
  const cuuint32_t box[2] = {kBlockK, kBoxRows};
  const cuuint32_t elem[2] = {1, 1};
  const CUresult r = Encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(base), dims, strides, box,
                               elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                               CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    return absl::InternalError(absl::StrCat("cuTensorMapEncodeTiled failed (", static_cast<int>(r), ") for a ", rows,
                                            " x ", cols, " bf16 matrix"));
  }
  return map;
}

}  // namespace

// Weights stay put, so their descriptors are made once.
struct CudaGroupedGemm::Maps {
  std::unordered_map<const void*, CUtensorMap> gate_up, down;
};

bool CudaGroupedGemm::Supported(int hidden, int intermediate) {
  if (hidden <= 0 || intermediate <= 0 || hidden % 8 != 0 || intermediate % 8 != 0) return false;
  return CudaComputeCapability() == 90 && Encoder() != nullptr;
}

absl::StatusOr<std::unique_ptr<CudaGroupedGemm>> CudaGroupedGemm::Create(int hidden, int intermediate) {
  if (!Supported(hidden, intermediate)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CudaGroupedGemm: needs a compute capability 9.0 GPU (H100, H200) and sizes that are multiples of 8; got ",
        hidden, " x ", intermediate));
  }
  for (const void* kernel :
       {reinterpret_cast<const void*>(&GroupedGemmKernel<true>), reinterpret_cast<const void*>(&GroupedGemmKernel<false>)}) {
    MM_RETURN_IF_ERROR(CudaStatus(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemLimit),
        "cudaFuncSetAttribute"));
  }
  int device = 0, sms = 0;
  MM_RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&device), "cudaGetDevice"));
  MM_RETURN_IF_ERROR(CudaStatus(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "SM count"));
  return std::unique_ptr<CudaGroupedGemm>(new CudaGroupedGemm(hidden, intermediate, sms));
}

CudaGroupedGemm::CudaGroupedGemm(int hidden, int intermediate, int sm_count)
    : hidden_(hidden), intermediate_(intermediate), sm_count_(sm_count), maps_(std::make_unique<Maps>()) {}

CudaGroupedGemm::~CudaGroupedGemm() = default;

absl::Status CudaGroupedGemm::Run(const uint16_t* x, const float* row_weight, const std::vector<ExpertFfnGroup>& groups,
                                  uint16_t* act, float* out, CudaStream stream) {
  const int hd = hidden_, in = intermediate_;
  auto map_of = [&](std::unordered_map<const void*, CUtensorMap>& cache, const uint16_t* w, int rows,
                    int cols) -> absl::StatusOr<CUtensorMap> {
    if (reinterpret_cast<uintptr_t>(w) % 16 != 0) {
      return absl::InvalidArgumentError("CudaGroupedGemm: expert weights must be 16-byte aligned");
    }
    auto it = cache.find(w);
    if (it != cache.end()) return it->second;
    MM_ASSIGN_OR_RETURN(CUtensorMap m, EncodeMap(w, rows, cols));
    cache.emplace(w, m);
    return m;
  };
  // The SwiGLU launch's table, then the down launch's; and the ring's
  // stage, in boxes, for the largest tile.
  std::vector<GroupEntry> up_table, down_table;
  int up_tiles = 0, down_tiles = 0, total_rows = 0, stage_boxes = 0;
  const int up_n = (in + kTileRows - 1) / kTileRows, down_n = (hd + 2 * kTileRows - 1) / (2 * kTileRows);
  for (const ExpertFfnGroup& g : groups) {
    if (g.num_rows <= 0) continue;
    GroupEntry e;
    std::memset(&e, 0, sizeof(e));
    e.row_offset = g.row_offset;
    e.num_rows = g.num_rows;
    const int token_tiles = (g.num_rows + kTileRows - 1) / kTileRows;
    MM_ASSIGN_OR_RETURN(e.a[0], map_of(maps_->gate_up, g.gate, in, hd));
    MM_ASSIGN_OR_RETURN(e.a[1], map_of(maps_->gate_up, g.up, in, hd));
    e.first_tile = up_tiles;
    up_tiles += up_n * token_tiles;
    up_table.push_back(e);
    MM_ASSIGN_OR_RETURN(e.a[0], map_of(maps_->down, g.down, hd, in));
    e.a[1] = e.a[0];
    e.first_tile = down_tiles;
    down_tiles += down_n * token_tiles;
    down_table.push_back(e);
    total_rows = std::max(total_rows, g.row_offset + g.num_rows);
    const int n = (std::min(g.num_rows, kTileRows) + 15) / 16 * 16;
    stage_boxes = std::max(stage_boxes, kABoxes + (n + kBoxRows - 1) / kBoxRows);
  }
  if (up_table.empty()) return absl::OkStatus();
  MM_ASSIGN_OR_RETURN(const CUtensorMap x_map, EncodeMap(x, total_rows, hd));
  MM_ASSIGN_OR_RETURN(const CUtensorMap act_map, EncodeMap(act, total_rows, in));
  const size_t n = up_table.size(), bytes = 2 * n * sizeof(GroupEntry);
  MM_RETURN_IF_ERROR(GrowBuffer(&table_, bytes));
  auto* d_up = table_->as<GroupEntry>();
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  up_table.insert(up_table.end(), down_table.begin(), down_table.end());
  MM_RETURN_IF_ERROR(
      CudaStatus(cudaMemcpyAsync(d_up, up_table.data(), bytes, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync"));
  const int stage_bytes = stage_boxes * kBoxBytes;
  const int stages = std::min(kMaxStages, (kSmemLimit - 1024 - kBarrierBytes - kRowWeightBytes) / stage_bytes);
  const size_t smem = static_cast<size_t>(stages) * stage_bytes + 1024 + kBarrierBytes + kRowWeightBytes;
  // One block per SM at most (the ring takes the shared memory), each on
  // tiles b, b + grid, ...
  const int up_grid = std::min(up_tiles, sm_count_), down_grid = std::min(down_tiles, sm_count_);
  GroupedGemmKernel<true><<<up_grid, kThreads, smem, s>>>(x_map, d_up, static_cast<int>(n), up_tiles, hd, in,
                                                            stage_boxes, stages, row_weight, act);
  MM_RETURN_IF_ERROR(LaunchStatus("GroupedGemmKernel<SwiGLU>"));
  GroupedGemmKernel<false><<<down_grid, kThreads, smem, s>>>(act_map, d_up + n, static_cast<int>(n), down_tiles, in,
                                                               hd, stage_boxes, stages, nullptr, out);
  return LaunchStatus("GroupedGemmKernel<down>");
}

}  // namespace moemesh
