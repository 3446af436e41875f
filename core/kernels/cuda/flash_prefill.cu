#include "core/kernels/cuda/flash_prefill.h"

#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/kernels/cuda/cp_async.cuh"
#include "core/kernels/cuda/cuda_check.cuh"
#include "core/kernels/cuda/mma_sync.cuh"
#include "core/kernels/cuda/paged_kv.cuh"

namespace moemesh {
namespace {

constexpr int kRows = kFlashPrefillRows, kKeys = 64;

struct FlashGeometry {
  AttentionShape s;
  PagedRows rows;
  const float* q;
  float* out;
  const int* tiles;
  int num_tiles;
  int group;       // query heads per KV head
  int block_log2;  // log2 of the cache's block size, or -1 when not a power of two
};

// Shared memory rows are kD + 8 elements: ldmatrix's eight 16-byte rows
// then fall in distinct banks.
template <int kD>
__host__ __device__ constexpr int Pitch() {
  return kD + 8;
}
template <int kD>
constexpr size_t SmemBytes() {
  return static_cast<size_t>(kRows + 4 * kKeys) * Pitch<kD>() * sizeof(uint16_t);
}

// Block (blockIdx.x, blockIdx.y): a tile of rows (the last tiles first:
// within a sequence they have the most keys), query head blockIdx.y. Each
// warp owns kMT consecutive 16-row pieces of the tile (the scores' m16
// side), so that each key or value fragment read from shared memory feeds
// kMT products; lane (g = lane / 4, t = lane % 4) holds rows g and g + 8
// of each piece.
template <int kD, int kMT>
__global__ void __launch_bounds__(kRows / kMT * 2, 2) FlashPrefillKernel(FlashGeometry g) {
  constexpr int kThreads = kRows / kMT * 2, kPitch = Pitch<kD>(), kSteps = kD / 16, kScoreTiles = kKeys / 8,
                kOutTiles = kD / 8, kWarpRows = 16 * kMT;
  extern __shared__ float4 smem4[];
  uint16_t* sq = reinterpret_cast<uint16_t*>(smem4);
  uint16_t* sk = sq + kRows * kPitch;     // [2][kKeys][kPitch]
  uint16_t* sv = sk + 2 * kKeys * kPitch;  // [2][kKeys][kPitch]
  const AttentionShape& s = g.s;
  const CudaKvPages& kv = g.rows.kv;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, tq = lane & 3;
  const int tile_index = g.num_tiles - 1 - blockIdx.x;
  const int row0 = g.tiles[2 * tile_index], count = g.tiles[2 * tile_index + 1];
  const int h = blockIdx.y, kvh = h / g.group;
  // The rows are at positions p0 .. last; their keys are [lo, last].
  const int p0 = g.rows.positions[row0], last = p0 + count - 1, win = s.sliding_window;
  const int lo = win > 0 ? max(0, p0 - win + 1) : 0;
  const int page0 = g.rows.page_offsets[row0];

  // Keys [t0, t0 + kKeys) of tile `tile` into buffer tile & 1, zeros past
  // `last`. A thread copies one 16-byte piece of every kThreads / kPieces-th
  // key, so that its column and its offset within a row stay put.
  constexpr int kPieces = kD / 8, kKeyStep = kThreads / kPieces;
  constexpr int kLoads = (kKeys + kKeyStep - 1) / kKeyStep;  // small heads: some threads copy none
  static_assert(kThreads % kPieces == 0, "a thread's piece must stay put");
  const int piece = tid % kPieces, key_first = tid / kPieces;
  const size_t k_col = kv.k_offset + kvh * kD + 8 * piece, v_col = kv.v_offset + kvh * kD + 8 * piece;
  auto load = [&](int tile) {
    const int t0 = lo + tile * kKeys;
    uint16_t* kd = sk + (tile & 1) * kKeys * kPitch + 8 * piece;
    uint16_t* vd = sv + (tile & 1) * kKeys * kPitch + 8 * piece;
#pragma unroll
    for (int j = 0; j < kLoads; ++j) {
      const int t = key_first + j * kKeyStep;
      if (t >= kKeys) break;
      CopyKvPiece(kv, page0, g.block_log2, min(t0 + t, last), k_col, v_col, t0 + t <= last, kd + t * kPitch,
                  vd + t * kPitch);
    }
    CpAsyncCommit();
  };
  const int tiles = (last - lo) / kKeys + 1;
  load(0);
  // The queries as bf16, zeros past the rows, while the first tile comes.
  for (int i = tid; i < kRows * kD / 4; i += kThreads) {
    const int r = i / (kD / 4), d = (i - r * (kD / 4)) * 4;
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (r < count) v = *reinterpret_cast<const float4*>(g.q + (static_cast<size_t>(row0 + r) * s.num_heads + h) * kD + d);
    *reinterpret_cast<uint2*>(sq + r * kPitch + d) = make_uint2(PackBf16(v.x, v.y), PackBf16(v.z, v.w));
  }
  __syncthreads();  // the queries

  // This warp's rows and their first and last positions (warps past the
  // rows have none).
  const int w0 = kWarpRows * warp;
  const int w_first = p0 + w0, w_last = p0 + min(w0 + kWarpRows - 1, count - 1);
  const float scale = s.scale * 1.4426950408889634f;  // scores in log2 units: exp2
  float o[kMT][kOutTiles][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int i = 0; i < kOutTiles; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
  }
  // Per row (piece mt, g or g + 8): the running maximum of the raw
  // scores and the sum of the probabilities.
  float m[kMT][2], l[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) m[mt][0] = m[mt][1] = -INFINITY, l[mt][0] = l[mt][1] = 0.f;

  for (int tile = 0; tile < tiles; ++tile) {
    AwaitKvTile(tile, tiles, load);
    const int t0 = lo + tile * kKeys;
    // Tiles wholly past this warp's rows, or before all their windows.
    const bool skip = w0 >= count || t0 > w_last || (win > 0 && t0 + kKeys - 1 <= w_first - win);
    if (!skip) {
      // Only tiles that cross the diagonal or a window's start need masks
      // (rows past `count` are never stored: they need none).
      const bool mask = t0 + kKeys - 1 > w_first || (win > 0 && t0 <= w_last - win);
      const uint16_t* kt = sk + (tile & 1) * kKeys * kPitch;
      const uint16_t* vt = sv + (tile & 1) * kKeys * kPitch;
      float sc[kMT][kScoreTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int j = 0; j < kScoreTiles; ++j) sc[mt][j][0] = sc[mt][j][1] = sc[mt][j][2] = sc[mt][j][3] = 0.f;
      }
#pragma unroll
      for (int k = 0; k < kSteps; ++k) {
        unsigned qa[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          LdMatrixX4(qa[mt], sq + (w0 + 16 * mt + (lane & 15)) * kPitch + 16 * k + (lane >> 4) * 8);
        }
#pragma unroll
        for (int n = 0; n < kKeys / 16; ++n) {
          unsigned b[4];
          LdMatrixX4(b, kt + (16 * n + (lane & 7) + ((lane >> 4) << 3)) * kPitch + 16 * k + ((lane >> 3) & 1) * 8);
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            MmaBf16(sc[mt][2 * n], qa[mt], b[0], b[1]);
            MmaBf16(sc[mt][2 * n + 1], qa[mt], b[2], b[3]);
          }
        }
      }
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        const int r_lo = w0 + 16 * mt + gq;
        // Masks, the running max and the correction of what came before.
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int j = 0; j < kScoreTiles; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int hi = e >> 1;
            if (mask) {
              const int pos = p0 + r_lo + 8 * hi, key = t0 + 8 * j + 2 * tq + (e & 1);
              if (key > pos || (win > 0 && key <= pos - win)) sc[mt][j][e] = -INFINITY;
            }
            mx[hi] = fmaxf(mx[hi], sc[mt][j][e]);
          }
        }
        float corr[2], ms[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const float m_new = fmaxf(m[mt][i], QuadMax(mx[i]));
          corr[i] = m_new == -INFINITY ? 1.f : exp2f((m[mt][i] - m_new) * scale);
          m[mt][i] = m_new;
          ms[i] = m_new == -INFINITY ? 0.f : m_new * scale;  // a row with no key yet: every p is 0
        }
        float sum[2] = {0.f, 0.f};
#pragma unroll
        for (int j = 0; j < kScoreTiles; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int hi = e >> 1;
            const float p = exp2f(fmaf(sc[mt][j][e], scale, -ms[hi]));
            sc[mt][j][e] = p;
            sum[hi] += p;
          }
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) l[mt][i] = l[mt][i] * corr[i] + QuadSum(sum[i]);
#pragma unroll
        for (int i = 0; i < kOutTiles; ++i) {
          o[mt][i][0] *= corr[0], o[mt][i][1] *= corr[0], o[mt][i][2] *= corr[1], o[mt][i][3] *= corr[1];
        }
      }
      // The weighted values: the scores' accumulators are the A fragments.
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        unsigned a[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          a[mt][0] = PackBf16(sc[mt][2 * kk][0], sc[mt][2 * kk][1]);
          a[mt][1] = PackBf16(sc[mt][2 * kk][2], sc[mt][2 * kk][3]);
          a[mt][2] = PackBf16(sc[mt][2 * kk + 1][0], sc[mt][2 * kk + 1][1]);
          a[mt][3] = PackBf16(sc[mt][2 * kk + 1][2], sc[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int n = 0; n < kD / 16; ++n) {
          unsigned b[4];
          LdMatrixX4Trans(b, vt + (16 * kk + (lane & 7) + ((lane >> 3) & 1) * 8) * kPitch + 16 * n + (lane >> 4) * 8);
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            MmaBf16(o[mt][2 * n], a[mt], b[0], b[1]);
            MmaBf16(o[mt][2 * n + 1], a[mt], b[2], b[3]);
          }
        }
      }
    }
    __syncthreads();  // the next tile's copy reuses this buffer
  }

#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = w0 + 16 * mt + gq + 8 * i;
      if (r >= count) continue;
      const float inv = l[mt][i] > 0 ? 1.f / l[mt][i] : 0.f;
      float* dst = g.out + (static_cast<size_t>(row0 + r) * s.num_heads + h) * kD + 2 * tq;
#pragma unroll
      for (int j = 0; j < kOutTiles; ++j) {
        *reinterpret_cast<float2*>(dst + 8 * j) = make_float2(o[mt][j][2 * i] * inv, o[mt][j][2 * i + 1] * inv);
      }
    }
  }
}

template <int kD, int kMT>
absl::Status Launch(const FlashGeometry& g, cudaStream_t stream) {
  constexpr size_t kSmem = SmemBytes<kD>();
  constexpr int kThreads = kRows / kMT * 2;
  MM_RETURN_IF_ERROR((AllowDynamicSmem<FlashPrefillKernel<kD, kMT>>(kSmem, "FlashPrefillKernel: shared memory")));
  FlashPrefillKernel<kD, kMT><<<dim3(g.num_tiles, g.s.num_heads), kThreads, kSmem, stream>>>(g);
  return LaunchStatus("FlashPrefillKernel");
}

template <int kD>
absl::Status LaunchRows(const FlashGeometry& g, int warp_rows, cudaStream_t stream) {
  return warp_rows == 16 ? Launch<kD, 1>(g, stream) : Launch<kD, 2>(g, stream);
}

}  // namespace

bool FlashPrefillFits(const AttentionShape& s, const PagedRows& rows, const float* q) {
  const CudaKvPages& kv = rows.kv;
  const int d = s.head_dim;
  const bool v_in_k = kv.k_blocks == kv.v_blocks && kv.k_offset == kv.v_offset;
  return kv.dtype == KvDType::kBf16 && d == s.v_head_dim && (d == 16 || d == 32 || d == 64 || d == 128) &&
         !v_in_k && (kv.k_stride | kv.v_stride | kv.k_offset | kv.v_offset) % 8 == 0 &&
         reinterpret_cast<uintptr_t>(q) % 16 == 0;
}

absl::Status FlashPrefillCuda(const AttentionShape& s, const float* q, const PagedRows& rows, const int* tiles,
                              int num_tiles, float* out, CudaStream stream, int warp_rows) {
  if (!FlashPrefillFits(s, rows, q) || s.num_kv_heads <= 0 || s.num_heads % s.num_kv_heads != 0) {
    return absl::InvalidArgumentError("FlashPrefillCuda: a call it does not take (FlashPrefillFits)");
  }
  if (warp_rows != 0 && warp_rows != 16 && warp_rows != 32) {
    return absl::InvalidArgumentError("FlashPrefillCuda: warp_rows must be 0, 16 or 32");
  }
  if (num_tiles == 0) return absl::OkStatus();
  if (s.num_heads > 65535) return absl::InvalidArgumentError("FlashPrefillCuda: too many heads");
  FlashGeometry g{s, rows, q, out, tiles, num_tiles, s.num_heads / s.num_kv_heads,
                  BlockLog2(rows.kv.block_size)};
  if (warp_rows == 0) warp_rows = kFlashPrefillWarpRows;
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (s.head_dim) {
    case 16: return LaunchRows<16>(g, warp_rows, st);
    case 32: return LaunchRows<32>(g, warp_rows, st);
    case 64: return LaunchRows<64>(g, warp_rows, st);
    default: return LaunchRows<128>(g, warp_rows, st);
  }
}

}  // namespace moemesh
