#include "core/kernels/cuda/flash_prefill.h"

#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/kernels/cuda/cp_async.cuh"
#include "core/kernels/cuda/cuda_check.cuh"
#include "core/kernels/cuda/mma_sync.cuh"

namespace moemesh {
namespace {

constexpr int kRows = kFlashPrefillRows, kKeys = 64, kWarps = kRows / 16, kThreads = 32 * kWarps;

struct FlashGeometry {
  AttentionShape s;
  PagedRows rows;
  const float* q;
  float* out;
  const int* tiles;
  int group;  // query heads per KV head
};

__device__ inline float QuadMax(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ inline float QuadSum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

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

// Block (blockIdx.x, blockIdx.y): tile blockIdx.x of rows, query head
// blockIdx.y. Warp w owns rows [16 w, 16 w + 16) of the tile: the scores'
// m16 side; lane (g = lane / 4, t = lane % 4) holds rows g and g + 8.
template <int kD>
__global__ void __launch_bounds__(kThreads) FlashPrefillKernel(FlashGeometry g) {
  constexpr int kPitch = Pitch<kD>(), kSteps = kD / 16, kScoreTiles = kKeys / 8, kOutTiles = kD / 8;
  extern __shared__ float4 smem4[];
  uint16_t* sq = reinterpret_cast<uint16_t*>(smem4);
  uint16_t* sk = sq + kRows * kPitch;     // [2][kKeys][kPitch]
  uint16_t* sv = sk + 2 * kKeys * kPitch;  // [2][kKeys][kPitch]
  const AttentionShape& s = g.s;
  const CudaKvPages& kv = g.rows.kv;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, tq = lane & 3;
  const int row0 = g.tiles[2 * blockIdx.x], count = g.tiles[2 * blockIdx.x + 1];
  const int h = blockIdx.y, kvh = h / g.group;
  // The rows are at positions p0 .. last; their keys are [lo, last].
  const int p0 = g.rows.positions[row0], last = p0 + count - 1, win = s.sliding_window;
  const int lo = win > 0 ? max(0, p0 - win + 1) : 0;
  const int page0 = g.rows.page_offsets[row0];

  // The queries as bf16, zeros past the rows.
  for (int i = tid; i < kRows * kD / 4; i += kThreads) {
    const int r = i / (kD / 4), d = (i - r * (kD / 4)) * 4;
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (r < count) v = *reinterpret_cast<const float4*>(g.q + (static_cast<size_t>(row0 + r) * s.num_heads + h) * kD + d);
    *reinterpret_cast<uint2*>(sq + r * kPitch + d) = make_uint2(PackBf16(v.x, v.y), PackBf16(v.z, v.w));
  }
  // Keys [t0, t0 + kKeys) of tile `tile` into buffer tile & 1, zeros past `last`.
  auto load = [&](int tile) {
    constexpr int kPieces = kD / 8;  // 16-byte pieces of a row
    const int t0 = lo + tile * kKeys;
    uint16_t* kd = sk + (tile & 1) * kKeys * kPitch;
    uint16_t* vd = sv + (tile & 1) * kKeys * kPitch;
    for (int i = tid; i < kKeys * kPieces; i += kThreads) {
      const int t = i / kPieces, c = i - t * kPieces, key = min(t0 + t, last);
      const int page = key / kv.block_size, within = key - page * kv.block_size;
      const uint16_t* kr = static_cast<const uint16_t*>(kv.k_blocks[page0 + page]) +
                           static_cast<size_t>(within) * kv.k_stride + kv.k_offset + kvh * kD + 8 * c;
      const uint16_t* vr = static_cast<const uint16_t*>(kv.v_blocks[page0 + page]) +
                           static_cast<size_t>(within) * kv.v_stride + kv.v_offset + kvh * kD + 8 * c;
      const bool ok = t0 + t <= last;
      CpAsync16<false>(kd + t * kPitch + 8 * c, kr, ok);
      CpAsync16<false>(vd + t * kPitch + 8 * c, vr, ok);
    }
    CpAsyncCommit();
  };
  const int tiles = (last - lo) / kKeys + 1;
  load(0);
  __syncthreads();  // the queries
  unsigned qa[kSteps][4];
#pragma unroll
  for (int k = 0; k < kSteps; ++k) LdMatrixX4(qa[k], sq + (16 * warp + (lane & 15)) * kPitch + 16 * k + (lane >> 4) * 8);

  const int r_lo = 16 * warp + gq, r_hi = r_lo + 8;
  // This warp's first and last position (warps past the rows have none).
  const int w_first = p0 + 16 * warp, w_last = p0 + min(16 * warp + 15, count - 1);
  const float scale = s.scale * 1.4426950408889634f;  // scores in log2 units: exp2
  float o[kOutTiles][4];
#pragma unroll
  for (int i = 0; i < kOutTiles; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  for (int tile = 0; tile < tiles; ++tile) {
    AwaitKvTile(tile, tiles, load);
    const int t0 = lo + tile * kKeys;
    // Tiles wholly past this warp's rows, or before all their windows.
    const bool skip = 16 * warp >= count || t0 > w_last || (win > 0 && t0 + kKeys - 1 <= w_first - win);
    if (!skip) {
      const uint16_t* kt = sk + (tile & 1) * kKeys * kPitch;
      const uint16_t* vt = sv + (tile & 1) * kKeys * kPitch;
      float sc[kScoreTiles][4];
#pragma unroll
      for (int j = 0; j < kScoreTiles; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
#pragma unroll
      for (int k = 0; k < kSteps; ++k) {
#pragma unroll
        for (int n = 0; n < kKeys / 16; ++n) {
          unsigned b[4];
          LdMatrixX4(b, kt + (16 * n + (lane & 7) + ((lane >> 4) << 3)) * kPitch + 16 * k + ((lane >> 3) & 1) * 8);
          MmaBf16(sc[2 * n], qa[k], b[0], b[1]);
          MmaBf16(sc[2 * n + 1], qa[k], b[2], b[3]);
        }
      }
      // Masks, the running max and the correction of what came before.
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int j = 0; j < kScoreTiles; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int hi = e >> 1, r = hi ? r_hi : r_lo, pos = p0 + r, key = t0 + 8 * j + 2 * tq + (e & 1);
          const bool in = r < count && key <= pos && (win <= 0 || key > pos - win);
          sc[j][e] = in ? sc[j][e] * scale : -INFINITY;
          mx[hi] = fmaxf(mx[hi], sc[j][e]);
        }
      }
      float corr[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const float m_new = fmaxf(m[i], QuadMax(mx[i]));
        corr[i] = m_new == -INFINITY ? 1.f : exp2f(m[i] - m_new);
        m[i] = m_new;
      }
      float sum[2] = {0.f, 0.f};
#pragma unroll
      for (int j = 0; j < kScoreTiles; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int hi = e >> 1;
          const float p = m[hi] == -INFINITY ? 0.f : exp2f(sc[j][e] - m[hi]);
          sc[j][e] = p;
          sum[hi] += p;
        }
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) l[i] = l[i] * corr[i] + QuadSum(sum[i]);
#pragma unroll
      for (int i = 0; i < kOutTiles; ++i) {
        o[i][0] *= corr[0], o[i][1] *= corr[0], o[i][2] *= corr[1], o[i][3] *= corr[1];
      }
      // The weighted values: the scores' accumulators are the A fragments.
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        const unsigned a[4] = {PackBf16(sc[2 * kk][0], sc[2 * kk][1]), PackBf16(sc[2 * kk][2], sc[2 * kk][3]),
                               PackBf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]),
                               PackBf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
#pragma unroll
        for (int n = 0; n < kD / 16; ++n) {
          unsigned b[4];
          LdMatrixX4Trans(b, vt + (16 * kk + (lane & 7) + ((lane >> 3) & 1) * 8) * kPitch + 16 * n + (lane >> 4) * 8);
          MmaBf16(o[2 * n], a, b[0], b[1]);
          MmaBf16(o[2 * n + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // the next tile's copy reuses this buffer
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = i ? r_hi : r_lo;
    if (r >= count) continue;
    const float inv = l[i] > 0 ? 1.f / l[i] : 0.f;
    float* dst = g.out + (static_cast<size_t>(row0 + r) * s.num_heads + h) * kD + 2 * tq;
#pragma unroll
    for (int j = 0; j < kOutTiles; ++j) {
      *reinterpret_cast<float2*>(dst + 8 * j) = make_float2(o[j][2 * i] * inv, o[j][2 * i + 1] * inv);
    }
  }
}

template <int kD>
absl::Status Launch(const FlashGeometry& g, int num_tiles, cudaStream_t stream) {
  constexpr size_t kSmem = SmemBytes<kD>();
  MM_RETURN_IF_ERROR(CudaStatus(
      cudaFuncSetAttribute(FlashPrefillKernel<kD>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem),
      "FlashPrefillKernel: shared memory"));
  FlashPrefillKernel<kD><<<dim3(num_tiles, g.s.num_heads), kThreads, kSmem, stream>>>(g);
  return LaunchStatus("FlashPrefillKernel");
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
                              int num_tiles, float* out, CudaStream stream) {
  if (!FlashPrefillFits(s, rows, q) || s.num_kv_heads <= 0 || s.num_heads % s.num_kv_heads != 0) {
    return absl::InvalidArgumentError("FlashPrefillCuda: a call it does not take (FlashPrefillFits)");
  }
  if (num_tiles == 0) return absl::OkStatus();
  if (s.num_heads > 65535) return absl::InvalidArgumentError("FlashPrefillCuda: too many heads");
  FlashGeometry g{s, rows, q, out, tiles, s.num_heads / s.num_kv_heads};
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (s.head_dim) {
    case 16: return Launch<16>(g, num_tiles, st);
    case 32: return Launch<32>(g, num_tiles, st);
    case 64: return Launch<64>(g, num_tiles, st);
    default: return Launch<128>(g, num_tiles, st);
  }
}

}  // namespace moemesh
