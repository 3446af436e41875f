#include "core/kernels/cuda/flash_decode.h"

#include <atomic>
#include <cmath>
#include <cstdint>

#include "core/common/status_macros.h"
#include "core/kernels/cuda/cp_async.cuh"
#include "core/kernels/cuda/cuda_check.cuh"
#include "core/kernels/cuda/mma_sync.cuh"
#include "core/kernels/cuda/paged_kv.cuh"

namespace moemesh {
namespace {

constexpr int kKeys = kFlashDecodeKeys, kStages = kFlashDecodeStages, kWarps = 4, kThreads = 32 * kWarps;
constexpr int kHeads = 16;  // the m16 side: a KV head's query heads
static_assert(kKeys == 16 * kWarps, "a warp takes 16 keys of a tile");

struct DecodeGeometry {
  AttentionShape s;
  PagedRows rows;
  const float* q;
  const int* row_ids;  // or null: row blockIdx.x
  float* out;
  float* part_acc;
  float* part_ml;
  int group;       // query heads per KV head
  int splits;
  int block_log2;  // log2 of the cache's block size, or -1 when not a power of two
  int num_rows;
};

// Rows of kD + 8 elements: ldmatrix's eight 16-byte rows fall in distinct
// banks.
template <int kD>
__host__ __device__ constexpr int Pitch() {
  return kD + 8;
}
template <int kD>
constexpr size_t SmemBytes() {
  return static_cast<size_t>(kHeads + 2 * kStages * kKeys) * Pitch<kD>() * sizeof(uint16_t);
}

// Block (row blockIdx.x or row_ids[blockIdx.x], KV head blockIdx.y, chunk
// blockIdx.z). Warp w scores keys [16 w, 16 w + 16) of each tile for the
// group's heads and adds their values into its own sums; lane (g = lane /
// 4, t = lane % 4) holds heads g and g + 8.
template <int kD>
__global__ void __launch_bounds__(kThreads, 2) FlashDecodeKernel(DecodeGeometry g) {
  constexpr int kPitch = Pitch<kD>(), kSteps = kD / 16, kOutTiles = kD / 8;
  constexpr int kPieces = kD / 8, kKeyStep = kThreads / kPieces;  // 16-byte pieces of a row
  static_assert(kKeys % kKeyStep == 0, "a thread's piece must stay put");
  extern __shared__ float4 smem4[];
  uint16_t* sq = reinterpret_cast<uint16_t*>(smem4);
  uint16_t* sk = sq + kHeads * kPitch;          // [kStages][kKeys][kPitch]
  uint16_t* sv = sk + kStages * kKeys * kPitch;  // [kStages][kKeys][kPitch]
  const AttentionShape& s = g.s;
  const CudaKvPages& kv = g.rows.kv;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, tq = lane & 3;
  const int r = g.row_ids != nullptr ? g.row_ids[blockIdx.x] : blockIdx.x;
  const int kvh = blockIdx.y, split = blockIdx.z, h0 = kvh * g.group;
  const int pos = g.rows.positions[r], win = s.sliding_window;
  const int lo = win > 0 ? max(0, pos - win + 1) : 0;
  const int chunk = ((pos - lo + g.splits) / g.splits + kKeys - 1) / kKeys * kKeys;
  const int first = lo + split * chunk, last = min(pos, first + chunk - 1);
  const int tiles = first <= last ? (last - first) / kKeys + 1 : 0;
  const int page0 = g.rows.page_offsets[r];

  // Tile `tile` into stage tile % kStages, zeros past `last`; an empty
  // group past the last tile, so that every thread counts the same groups.
  const int piece = tid % kPieces, key_first = tid / kPieces;
  const size_t k_col = kv.k_offset + kvh * kD + 8 * piece, v_col = kv.v_offset + kvh * kD + 8 * piece;
  auto load = [&](int tile) {
    if (tile < tiles) {
      const int t0 = first + tile * kKeys, stage = tile % kStages;
      uint16_t* kd = sk + stage * kKeys * kPitch + 8 * piece;
      uint16_t* vd = sv + stage * kKeys * kPitch + 8 * piece;
#pragma unroll
      for (int t = key_first; t < kKeys; t += kKeyStep) {
        CopyKvPiece(kv, page0, g.block_log2, min(t0 + t, last), k_col, v_col, t0 + t <= last, kd + t * kPitch,
                    vd + t * kPitch);
      }
    }
    CpAsyncCommit();
  };
#pragma unroll
  for (int t = 0; t < kStages - 1; ++t) load(t);
  // The group's queries as bf16, zeros past it, while the first tiles come.
  for (int i = tid; i < kHeads * kD / 4; i += kThreads) {
    const int j = i / (kD / 4), d = (i - j * (kD / 4)) * 4;
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (j < g.group) v = *reinterpret_cast<const float4*>(g.q + (static_cast<size_t>(r) * s.num_heads + h0 + j) * kD + d);
    *reinterpret_cast<uint2*>(sq + j * kPitch + d) = make_uint2(PackBf16(v.x, v.y), PackBf16(v.z, v.w));
  }
  __syncthreads();  // the queries
  unsigned qa[kSteps][4];
#pragma unroll
  for (int k = 0; k < kSteps; ++k) LdMatrixX4(qa[k], sq + (lane & 15) * kPitch + 16 * k + (lane >> 4) * 8);

  const float scale = s.scale * 1.4426950408889634f;  // scores in log2 units: exp2
  float o[kOutTiles][4];
#pragma unroll
  for (int i = 0; i < kOutTiles; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // raw scores' running max, the sum

  for (int tile = 0; tile < tiles; ++tile) {
    CpAsyncWait<kStages - 2>();
    __syncthreads();  // this tile is in; every warp is done with the stage the next copy takes
    load(tile + kStages - 1);
    const int stage = tile % kStages, t0 = first + tile * kKeys;
    const uint16_t* kt = sk + stage * kKeys * kPitch;
    const uint16_t* vt = sv + stage * kKeys * kPitch;
    float sc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int k = 0; k < kSteps; ++k) {
      unsigned b[4];
      LdMatrixX4(b, kt + (16 * warp + (lane & 7) + ((lane >> 4) << 3)) * kPitch + 16 * k + ((lane >> 3) & 1) * 8);
      MmaBf16(sc[0], qa[k], b[0], b[1]);
      MmaBf16(sc[1], qa[k], b[2], b[3]);
    }
    // Keys past the chunk's last (the last tile only).
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (t0 + 16 * warp + 8 * j + 2 * tq + (e & 1) > last) sc[j][e] = -INFINITY;
        mx[e >> 1] = fmaxf(mx[e >> 1], sc[j][e]);
      }
    }
    float corr[2], ms[2], sum[2] = {0.f, 0.f};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float m_new = fmaxf(m[i], QuadMax(mx[i]));
      corr[i] = m_new == -INFINITY ? 1.f : exp2f((m[i] - m_new) * scale);
      m[i] = m_new;
      ms[i] = m_new == -INFINITY ? 0.f : m_new * scale;  // no key yet: every p is 0
    }
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float p = exp2f(fmaf(sc[j][e], scale, -ms[e >> 1]));
        sc[j][e] = p;
        sum[e >> 1] += p;
      }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) l[i] = l[i] * corr[i] + QuadSum(sum[i]);
#pragma unroll
    for (int i = 0; i < kOutTiles; ++i) {
      o[i][0] *= corr[0], o[i][1] *= corr[0], o[i][2] *= corr[1], o[i][3] *= corr[1];
    }
    // The weighted values: the scores' accumulators are the A fragment.
    const unsigned a[4] = {PackBf16(sc[0][0], sc[0][1]), PackBf16(sc[0][2], sc[0][3]), PackBf16(sc[1][0], sc[1][1]),
                           PackBf16(sc[1][2], sc[1][3])};
#pragma unroll
    for (int n = 0; n < kD / 16; ++n) {
      unsigned b[4];
      LdMatrixX4Trans(b, vt + (16 * warp + (lane & 7) + ((lane >> 3) & 1) * 8) * kPitch + 16 * n + (lane >> 4) * 8);
      MmaBf16(o[2 * n], a, b[0], b[1]);
      MmaBf16(o[2 * n + 1], a, b[2], b[3]);
    }
  }

  // The warps' sums merge through shared memory (the tiles' space).
  CpAsyncWait<0>();
  __syncthreads();
  float* wo = reinterpret_cast<float*>(sk);  // [kWarps][kHeads][kD]
  float* wm = wo + kWarps * kHeads * kD;     // [kWarps][kHeads]
  float* wl = wm + kWarps * kHeads;          // [kWarps][kHeads]
  static_assert((kWarps * kHeads * (kD + 2)) * sizeof(float) <= 2 * kStages * kKeys * Pitch<kD>() * sizeof(uint16_t),
                "the merge fits in the tiles' space");
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int head = gq + 8 * i;
    float* row = wo + (warp * kHeads + head) * kD + 2 * tq;
#pragma unroll
    for (int j = 0; j < kOutTiles; ++j) *reinterpret_cast<float2*>(row + 8 * j) = make_float2(o[j][2 * i], o[j][2 * i + 1]);
    if (tq == 0) {
      wm[warp * kHeads + head] = m[i];
      wl[warp * kHeads + head] = l[i];
    }
  }
  __syncthreads();
  for (int i = tid; i < g.group * kD; i += kThreads) {
    const int head = i / kD, d = i - head * kD;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, wm[w * kHeads + head]);
    float num = 0.f, den = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float mw = wm[w * kHeads + head];
      const float c = mw == -INFINITY ? 0.f : exp2f((mw - mx) * scale);
      num += c * wo[(w * kHeads + head) * kD + d];
      den += c * wl[w * kHeads + head];
    }
    const size_t at = static_cast<size_t>(r) * s.num_heads + h0 + head;
    if (g.splits == 1) {
      g.out[at * kD + d] = den > 0 ? num / den : 0.f;  // no keys (a bad position): zeros, not NaN
    } else {
      g.part_acc[(at * g.splits + split) * kD + d] = num;
      if (d == 0) {
        g.part_ml[(at * g.splits + split) * 2] = mx == -INFINITY ? -INFINITY : mx * s.scale;
        g.part_ml[(at * g.splits + split) * 2 + 1] = den;
      }
    }
  }
}

template <int kD>
absl::Status AllowSmem() {
  return AllowDynamicSmem<FlashDecodeKernel<kD>>(SmemBytes<kD>(), "FlashDecodeKernel: shared memory");
}

// Asked of the driver once per device: it sizes every call's split.
template <int kD>
absl::StatusOr<int> BlocksPerSm() {
  static std::atomic<int> known[64];  // by device; 0: not asked yet
  int device = 0;
  MM_RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&device), "cudaGetDevice"));
  if (device < 64) {
    if (const int n = known[device].load(std::memory_order_relaxed); n > 0) return n;
  }
  MM_RETURN_IF_ERROR(AllowSmem<kD>());
  int n = 0;
  MM_RETURN_IF_ERROR(CudaStatus(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, FlashDecodeKernel<kD>, kThreads, SmemBytes<kD>()),
      "FlashDecodeKernel: occupancy"));
  if (device < 64) known[device].store(n, std::memory_order_relaxed);
  return n;
}

template <int kD>
absl::Status Launch(const DecodeGeometry& g, cudaStream_t stream) {
  MM_RETURN_IF_ERROR(AllowSmem<kD>());
  FlashDecodeKernel<kD><<<dim3(g.num_rows, g.s.num_kv_heads, g.splits), kThreads, SmemBytes<kD>(), stream>>>(g);
  return LaunchStatus("FlashDecodeKernel");
}

}  // namespace

bool FlashDecodeFits(const AttentionShape& s, const PagedRows& rows, const float* q) {
  const CudaKvPages& kv = rows.kv;
  const int d = s.head_dim;
  const bool v_in_k = kv.k_blocks == kv.v_blocks && kv.k_offset == kv.v_offset;
  return kv.dtype == KvDType::kBf16 && d == s.v_head_dim && (d == 64 || d == 128) && s.num_kv_heads > 0 &&
         s.num_heads % s.num_kv_heads == 0 && s.num_heads / s.num_kv_heads <= kHeads && !v_in_k &&
         (kv.k_stride | kv.v_stride | kv.k_offset | kv.v_offset) % 8 == 0 && reinterpret_cast<uintptr_t>(q) % 16 == 0;
}

absl::StatusOr<int> FlashDecodeBlocksPerSm(const AttentionShape& s) {
  if (s.head_dim == 64) return BlocksPerSm<64>();
  if (s.head_dim == 128) return BlocksPerSm<128>();
  return absl::InvalidArgumentError("FlashDecodeBlocksPerSm: heads of 64 or 128");
}

absl::Status FlashDecodeCuda(const AttentionShape& s, const float* q, const PagedRows& rows, const int* row_ids,
                             int num_rows, float* out, int splits, float* part_acc, float* part_ml,
                             CudaStream stream) {
  if (!FlashDecodeFits(s, rows, q)) {
    return absl::InvalidArgumentError("FlashDecodeCuda: a call it does not take (FlashDecodeFits)");
  }
  if (splits < 1 || splits > 65535 || (splits > 1 && (part_acc == nullptr || part_ml == nullptr))) {
    return absl::InvalidArgumentError("FlashDecodeCuda: splits must be in [1, 65535], with partials past 1");
  }
  if (s.num_kv_heads > 65535) return absl::InvalidArgumentError("FlashDecodeCuda: too many heads");
  if (num_rows < 0 || num_rows > rows.rows || (row_ids == nullptr && num_rows != rows.rows)) {
    return absl::InvalidArgumentError("FlashDecodeCuda: num_rows must be the rows', or row_ids' count");
  }
  if (num_rows == 0) return absl::OkStatus();
  DecodeGeometry g{s, rows, q, row_ids, out, part_acc, part_ml, s.num_heads / s.num_kv_heads, splits,
                   BlockLog2(rows.kv.block_size), num_rows};
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  return s.head_dim == 64 ? Launch<64>(g, st) : Launch<128>(g, st);
}

}  // namespace moemesh
