#include "core/kernels/cuda/attention.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <vector>

#include <cuda_fp8.h>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/kernels/cuda/cp_async.cuh"
#include "core/kernels/cuda/cuda_check.cuh"
#include "core/kernels/cuda/flash_decode.h"
#include "core/kernels/cuda/flash_prefill.h"
#include "core/kernels/cuda/mma_sync.cuh"

namespace moemesh {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxSplits = 64;

// What both kernels of one call need, worked out on the host.
struct Geometry {
  AttentionShape s;
  PagedRows rows;
  const float* q;
  float* out;
  int group;        // query heads per KV head
  int head_groups;  // blocks per KV head
  int splits;
  int dpad, vpad;      // head sizes rounded up to whole float4s
  int kpitch, vpitch;  // CUDA-core kernel: tile row pitches in elements (16 bytes more: no bank conflicts)
  int qpitch, mma_kpitch, mma_vpitch;  // tensor-core kernel: query pitch in floats, tiles' in elements
  bool v_in_k;         // V's rows are the heads of K's rows (latent attention): one tile
  bool aligned;        // rows are whole 16-byte pieces: 16-byte copies
  float out_scale;     // the values' scale (FP8), applied to the outputs
  const int* tiles;    // tensor-core kernel: [tiles][2] first row and count, or null: a row each
  int pair_heads;      // tensor-core kernel: heads per block (the rest of its 32 pairs are rows)
  float* part_acc;     // [rows][heads][splits][vpad], when splits > 1
  float* part_ml;      // [rows][heads][splits][2]: running max and sum
  const int* row_ids;  // the merge's rows (one a block), or null: all
};

// The cache's element types: fp32, bf16's bits, e4m3 bytes; widened to
// fp32 exactly.
template <typename T>
__device__ inline float Widen(T v);
template <>
__device__ inline float Widen<float>(float v) {
  return v;
}
template <>
__device__ inline float Widen<uint16_t>(uint16_t v) {
  return __uint_as_float(static_cast<unsigned>(v) << 16);
}
template <>
__device__ inline float Widen<uint8_t>(uint8_t v) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(v, __NV_E4M3)));
}
// Elements [0, 4) at p, 4-element aligned.
template <typename T>
__device__ inline float4 Widen4(const T* p);
template <>
__device__ inline float4 Widen4<float>(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}
template <>
__device__ inline float4 Widen4<uint16_t>(const uint16_t* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                     __uint_as_float(u.y & 0xffff0000u));
}
template <>
__device__ inline float4 Widen4<uint8_t>(const uint8_t* p) {
  const unsigned u = *reinterpret_cast<const unsigned*>(p);
  const float2 lo = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(u & 0xffffu, __NV_E4M3)));
  const float2 hi = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(u >> 16, __NV_E4M3)));
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}

__device__ inline float WarpMax(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}
__device__ inline float WarpSum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Copies keys [t0, t0 + nv) of one KV head (width elements at `offset` of
// rows `stride` elements apart) into rows [0, nv) of a tile of rows `pitch`
// elements apart, and zeros into rows [nv, rows) (the 16-byte path only;
// the element-wise one needs rows == nv). kBlockThreads threads share the
// copies.
template <int kBlockThreads, typename T>
__device__ inline void LoadTile(const void* const* blocks, int block_size, int stride, int offset, int width,
                                bool aligned, int t0, int nv, int rows, T* tile, int pitch) {
  constexpr int kPer = 16 / sizeof(T);  // elements of a 16-byte piece
  if (aligned) {
    // Each thread walks its pieces (row t, 16-byte column d4) and their
    // rows' pages by steps, dividing once rather than three times a piece
    // (latent decode and prefill 3-4% faster on an H200).
    const int per_row = width / kPer, total = rows * per_row;
    int c = threadIdx.x;
    if (c >= total) return;
    const int step_t = kBlockThreads / per_row, step_d = kBlockThreads - step_t * per_row;
    int t = c / per_row, d4 = c - t * per_row;
    int p = t0 + min(t, nv - 1), page = p / block_size, within = p - page * block_size;
    const T* base = static_cast<const T*>(blocks[page]);
    for (;;) {
      CpAsync16<false>(tile + t * pitch + kPer * d4,
                       base + static_cast<size_t>(within) * stride + offset + kPer * d4, t < nv);
      if ((c += kBlockThreads) >= total) break;
      t += step_t;
      d4 += step_d;
      if (d4 >= per_row) d4 -= per_row, ++t;
      const int next = t0 + min(t, nv - 1);  // never behind p
      within += next - p;
      p = next;
      if (within >= block_size) {
        do {
          within -= block_size;
          ++page;
        } while (within >= block_size);
        base = static_cast<const T*>(blocks[page]);
      }
    }
  } else {
    for (int c = threadIdx.x; c < nv * width; c += kBlockThreads) {
      const int t = c / width, d = c - t * width, p = t0 + t;
      const T* src =
          static_cast<const T*>(blocks[p / block_size]) + static_cast<size_t>(p % block_size) * stride + offset + d;
      if constexpr (sizeof(T) == 4) {
        CpAsync4(tile + t * pitch + d, src);
      } else {  // cp.async moves 4 bytes at least; the barrier after the wait publishes these
        tile[t * pitch + d] = *src;
      }
    }
  }
}

// The double-buffered K/V pipeline both kernels run: tile `tile` (keys
// from first + tile * kKeys to at most `last`) of KV head `kvh` into buffer
// tile & 1 of `ks` (and `vs`, unless V shares K's rows), as one cp.async
// group. With `whole`, rows past the keys are zeros (kKeys rows always).
template <int kBlockThreads, int kKeys, typename T>
__device__ inline void LoadKvTile(const Geometry& g, int page0, int kvh, int first, int last, int tile, bool whole,
                                  T* ks, int kpitch, T* vs, int vpitch) {
  const AttentionShape& s = g.s;
  const CudaKvPages& kv = g.rows.kv;
  const int t0 = first + tile * kKeys, nv = min(kKeys, last - t0 + 1), rows = whole ? kKeys : nv, buf = tile & 1;
  const bool aligned = whole || g.aligned;  // `whole` needs the 16-byte path
  LoadTile<kBlockThreads>(kv.k_blocks + page0, kv.block_size, kv.k_stride, kv.k_offset + kvh * s.head_dim,
                          s.head_dim, aligned, t0, nv, rows, ks + buf * kKeys * kpitch, kpitch);
  if (!g.v_in_k) {
    LoadTile<kBlockThreads>(kv.v_blocks + page0, kv.block_size, kv.v_stride, kv.v_offset + kvh * s.v_head_dim,
                            s.v_head_dim, aligned, t0, nv, rows, vs + buf * kKeys * vpitch, vpitch);
  }
  CpAsyncCommit();
}

// One tile's step of the online softmax for one row of scores, a warp per
// row: `v` is this lane's score (-inf for none). Returns its weight and
// updates the row's running max `*m`, sum `*l` and the correction `*corr`
// for what was accumulated before (lane 0 alone reads and writes them). A
// row with no score yet keeps its state.
__device__ inline float OnlineSoftmaxStep(float v, float* m, float* l, float* corr) {
  const bool lead = (threadIdx.x & 31) == 0;
  const float m_old = __shfl_sync(0xffffffffu, lead ? *m : 0.f, 0), m_new = fmaxf(m_old, WarpMax(v));
  const float p = m_new == -INFINITY ? 0.f : expf(v - m_new);
  const float sum = WarpSum(p);
  if (lead) {
    const float c = m_new == -INFINITY ? 1.f : expf(m_old - m_new);
    *corr = c;
    *l = *l * c + sum;
    *m = m_new;
  }
  return p;
}

// The CUDA-core kernel's shared memory: queries (fp32), two tiles of keys
// and of values (elements of `elem` bytes), scores and softmax state.
inline size_t SmemBytes(const Geometry& g, int elem, int heads, int keys) {
  const size_t tiles = 2 * static_cast<size_t>(keys) * g.kpitch + (g.v_in_k ? 0 : 2 * static_cast<size_t>(keys) * g.vpitch);
  return (static_cast<size_t>(heads) * g.dpad + static_cast<size_t>(heads) * keys + 3 * heads) * sizeof(float) +
         tiles * elem;
}

// One block: query row blockIdx.x, up to kHeads query heads of one KV head
// (blockIdx.y), keys of chunk blockIdx.z of the row's range. kDim4: the
// widest head in float4s; kKeys: keys per tile (at most 32, a warp's).
template <int kDim4, int kHeads, int kKeys, typename T>
__global__ void __launch_bounds__(kThreads) SplitKernel(Geometry g) {
  static_assert(kKeys <= 32, "a warp reduces a tile's scores");
  constexpr int kItems = (kHeads * kDim4 + kThreads - 1) / kThreads;
  extern __shared__ float4 smem4[];
  const AttentionShape& s = g.s;
  const int r = blockIdx.x, split = blockIdx.z, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int kvh = blockIdx.y / g.head_groups;
  const int h0 = kvh * g.group + (blockIdx.y % g.head_groups) * kHeads;
  const int nh = min(kHeads, (kvh + 1) * g.group - h0);
  const int pos = g.rows.positions[r];
  const int lo = s.sliding_window > 0 ? max(0, pos - s.sliding_window + 1) : 0;
  const int chunk = ((pos - lo + g.splits) / g.splits + kKeys - 1) / kKeys * kKeys;
  const int first = lo + split * chunk, last = min(pos, first + chunk - 1);

  float* qs = reinterpret_cast<float*>(smem4);
  T* ks = reinterpret_cast<T*>(qs + kHeads * g.dpad);
  T* vs = g.v_in_k ? ks : ks + 2 * kKeys * g.kpitch;
  float* sp = reinterpret_cast<float*>(ks + 2 * kKeys * g.kpitch + (g.v_in_k ? 0 : 2 * kKeys * g.vpitch));  // scores, then weights
  float* sm = sp + kHeads * kKeys;  // running max per head
  float* sl = sm + kHeads;          // running sum
  float* sc = sl + kHeads;          // this tile's correction

  // Queries, zero past head_dim, as are the K tiles' pads (loads never write
  // them), so that dot products can run over whole float4s.
  for (int i = tid; i < kHeads * g.dpad; i += kThreads) {
    const int j = i / g.dpad, d = i - j * g.dpad;
    qs[i] = j < nh && d < s.head_dim ? g.q[(static_cast<size_t>(r) * s.num_heads + h0 + j) * s.head_dim + d] : 0.f;
  }
  const int kpad = g.dpad - s.head_dim;
  for (int i = tid; i < 2 * kKeys * kpad; i += kThreads) ks[(i / kpad) * g.kpitch + s.head_dim + i % kpad] = T(0);
  if (tid < kHeads) {
    sm[tid] = -INFINITY;
    sl[tid] = 0.f;
  }
  __syncthreads();

  const int dv4 = g.vpad / 4, items = nh * dv4;
  float4 acc[kItems];
#pragma unroll
  for (int i = 0; i < kItems; ++i) acc[i] = make_float4(0.f, 0.f, 0.f, 0.f);

  const int tiles = first <= last ? (last - first + kKeys) / kKeys : 0;
  const int page0 = g.rows.page_offsets[r];
  auto load = [&](int tile) {
    LoadKvTile<kThreads, kKeys>(g, page0, kvh, first, last, tile, false, ks, g.kpitch, vs, g.vpitch);
  };
  if (tiles > 0) load(0);
  for (int tile = 0; tile < tiles; ++tile) {
    AwaitKvTile(tile, tiles, load);
    const int nv = min(kKeys, last - (first + tile * kKeys) + 1), buf = tile & 1;
    const T* kt = ks + buf * kKeys * g.kpitch;
    const T* vt = vs + buf * kKeys * g.vpitch;
    // Scores: a warp's lanes take different keys of one head.
    for (int p = tid; p < kHeads * kKeys; p += kThreads) {
      const int j = p / kKeys, t = p - j * kKeys;
      float score = -INFINITY;
      if (j < nh && t < nv) {
        const float4* qv = reinterpret_cast<const float4*>(qs + j * g.dpad);
        const T* kr = kt + t * g.kpitch;
        // Eight independent sums: one chain of dependent adds would leave
        // each lane waiting on its own latency.
        float4 e = make_float4(0.f, 0.f, 0.f, 0.f), o = e;
        const int d4 = g.dpad / 4;
        int d = 0;
        for (; d + 1 < d4; d += 2) {
          const float4 a = qv[d], b = Widen4(kr + 4 * d), a1 = qv[d + 1], b1 = Widen4(kr + 4 * d + 4);
          e.x += a.x * b.x, e.y += a.y * b.y, e.z += a.z * b.z, e.w += a.w * b.w;
          o.x += a1.x * b1.x, o.y += a1.y * b1.y, o.z += a1.z * b1.z, o.w += a1.w * b1.w;
        }
        if (d < d4) {
          const float4 a = qv[d], b = Widen4(kr + 4 * d);
          e.x += a.x * b.x, e.y += a.y * b.y, e.z += a.z * b.z, e.w += a.w * b.w;
        }
        score = (((e.x + o.x) + (e.y + o.y)) + ((e.z + o.z) + (e.w + o.w))) * s.scale;
      }
      sp[p] = score;
    }
    __syncthreads();
    // Online softmax, a warp per head.
    for (int j = warp; j < nh; j += kWarps) {
      const float p = OnlineSoftmaxStep(lane < kKeys ? sp[j * kKeys + lane] : -INFINITY, &sm[j], &sl[j], &sc[j]);
      if (lane < kKeys) sp[j * kKeys + lane] = p;
    }
    __syncthreads();
    // Weighted values: each thread owns float4s of some heads' outputs.
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int item = tid + i * kThreads;
      if (item < items) {
        const int j = item / dv4, c = item - j * dv4;
        const float corr = sc[j];
        float4 a = acc[i];
        a.x *= corr, a.y *= corr, a.z *= corr, a.w *= corr;
        const float* pj = sp + j * kKeys;
        // Even and odd keys in separate sums, as the scores above.
        float4 b = make_float4(0.f, 0.f, 0.f, 0.f);
        int t = 0;
        for (; t + 1 < nv; t += 2) {
          const float p = pj[t], p1 = pj[t + 1];
          const float4 v = Widen4(vt + t * g.vpitch + 4 * c);
          const float4 v1 = Widen4(vt + (t + 1) * g.vpitch + 4 * c);
          a.x += p * v.x, a.y += p * v.y, a.z += p * v.z, a.w += p * v.w;
          b.x += p1 * v1.x, b.y += p1 * v1.y, b.z += p1 * v1.z, b.w += p1 * v1.w;
        }
        if (t < nv) {
          const float p = pj[t];
          const float4 v = Widen4(vt + t * g.vpitch + 4 * c);
          a.x += p * v.x, a.y += p * v.y, a.z += p * v.z, a.w += p * v.w;
        }
        acc[i] = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
      }
    }
    __syncthreads();  // the next tile's copy reuses this buffer
  }

#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int item = tid + i * kThreads;
    if (item >= items) continue;
    const int j = item / dv4, c = item - j * dv4;
    const size_t head = static_cast<size_t>(r) * s.num_heads + h0 + j;
    if (g.splits == 1) {
      const float inv = sl[j] > 0 ? g.out_scale / sl[j] : 0.f;  // no keys (a bad position): zeros, not NaN
      const float o[4] = {acc[i].x * inv, acc[i].y * inv, acc[i].z * inv, acc[i].w * inv};
      for (int e = 0; e < 4 && c * 4 + e < s.v_head_dim; ++e) g.out[head * s.v_head_dim + c * 4 + e] = o[e];
    } else {
      reinterpret_cast<float4*>(g.part_acc + (head * g.splits + split) * g.vpad)[c] = acc[i];
    }
  }
  if (g.splits > 1 && tid < nh) {
    const size_t at = ((static_cast<size_t>(r) * s.num_heads + h0 + tid) * g.splits + split) * 2;
    g.part_ml[at] = sm[tid];
    g.part_ml[at + 1] = sl[tid];
  }
}

// The tensor-core kernel. Its M side is 32 (query row, head) pairs that
// share one KV head and one sequence, so that each tile of keys read serves
// them all:
//   * latent attention (DeepSeek-V3: 128 heads over one 576-wide row whose
//     first 512 floats are V) takes 32 heads of one row. It does about 120
//     FLOP per byte read, too much arithmetic for the CUDA cores;
//   * prefill takes the group's heads for 32 / group consecutive rows of
//     one prompt (8 rows of Mixtral's 4 heads), where the decode kernel
//     would read the keys again for every row.
// Both products run in TF32 (mma.sync m16n8k8: 10-bit mantissas, fp32
// sums); softmax stays fp32. A block of 8 warps serves the 32 pairs and one
// chunk of keys, 32 keys a tile: warp w scores keys [8 (w % 4), + 8) of the
// tile for the pairs of m16 tile w / 4, then accumulates a quarter of their
// value columns. Shared memory holds the queries and two tiles of keys (and
// of values, unless they are the keys' heads), which bounds the head size.
constexpr int kPairs = 32, kMmaKeys = 32, kMmaWarps = 8, kMmaThreads = 32 * kMmaWarps;
constexpr int kMaxLatentDim = 576, kMaxPrefillDim = 256;

__host__ __device__ inline int RoundUp8(int v) { return (v + 7) / 8 * 8; }
inline int RoundUp(int v, int to) { return (v + to - 1) / to * to; }

// Row pitches, in elements of `elem` bytes. K's is 16 bytes past a
// multiple of 128, so that the score product's fragment loads (8 rows by 4
// columns) hit distinct banks; a separate V's is 32 bytes past, for the
// value product's (4 rows by 8 columns). V within K rows shares K's pitch
// (two-way conflicts on its loads). The queries' (fp32) is K's in floats.
void SetMmaPitches(Geometry* g, int elem) {
  const int per = 16 / elem;  // elements of a 16-byte piece
  g->qpitch = RoundUp8(g->s.head_dim) + 4;
  g->mma_kpitch = RoundUp(RoundUp8(g->s.head_dim), per) + per;
  const int v8 = RoundUp(RoundUp8(g->s.v_head_dim), per), line = 128 / elem;
  g->mma_vpitch = g->v_in_k ? g->mma_kpitch : v8 + (2 * per - v8 % line + line) % line;
}

size_t MmaSmemBytes(const Geometry& g, int elem) {
  const size_t tiles = 2 * kMmaKeys * static_cast<size_t>(g.mma_kpitch) +
                       (g.v_in_k ? 0 : 2 * kMmaKeys * static_cast<size_t>(g.mma_vpitch));
  return (kPairs * static_cast<size_t>(g.qpitch) + kPairs * (kMmaKeys + 4) +
          5 * kPairs) * sizeof(float) +  // running max, sum, correction; each pair's first and last key
         tiles * elem;
}

// kNT: the most value n-tiles (8 columns) a warp owns.
template <int kNT, typename T>
__global__ void __launch_bounds__(kMmaThreads) MmaKernel(Geometry g) {
  extern __shared__ float4 smem4[];
  const AttentionShape& s = g.s;
  const int split = blockIdx.z, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int gq = lane >> 2, tq = lane & 3, mt = warp / 4, quarter = warp % 4;
  // This block's rows [row0, row0 + nrows) and heads [h0, h0 + nh).
  int row0 = blockIdx.x, nrows = 1;
  if (g.tiles != nullptr) row0 = g.tiles[2 * blockIdx.x], nrows = g.tiles[2 * blockIdx.x + 1];
  const int kvh = blockIdx.y / g.head_groups;
  const int h0 = kvh * g.group + (blockIdx.y % g.head_groups) * g.pair_heads;
  const int nh = min(g.pair_heads, (kvh + 1) * g.group - h0);
  const int d8 = RoundUp8(s.head_dim), qpitch = g.qpitch, kpitch = g.mma_kpitch, v8 = RoundUp8(s.v_head_dim);
  const int vpitch = g.mma_vpitch, spitch = kMmaKeys + 4;

  float* qs = reinterpret_cast<float*>(smem4);
  T* ks = reinterpret_cast<T*>(qs + kPairs * qpitch);
  T* vs = g.v_in_k ? ks : ks + 2 * kMmaKeys * kpitch;
  float* sp = reinterpret_cast<float*>(ks + 2 * kMmaKeys * kpitch + (g.v_in_k ? 0 : 2 * kMmaKeys * vpitch));  // [pair][key]
  float* sm = sp + kPairs * spitch;
  float* sl = sm + kPairs;
  float* sc = sl + kPairs;
  int* pair_lo = reinterpret_cast<int*>(sc + kPairs);  // each pair's keys: [lo, hi]
  int* pair_hi = pair_lo + kPairs;

  // Pair m: row row0 + m / pair_heads, head h0 + m % pair_heads; pairs
  // past the rows or heads have no keys (hi = -1) and zero queries.
  if (tid < kPairs) {
    const int rr = tid / g.pair_heads, hh = tid % g.pair_heads;
    int lo = 0, hi = -1;
    if (rr < nrows && hh < nh) {
      hi = g.rows.positions[row0 + rr];
      lo = s.sliding_window > 0 ? max(0, hi - s.sliding_window + 1) : 0;
    }
    pair_lo[tid] = lo;
    pair_hi[tid] = hi;
    sm[tid] = -INFINITY;
    sl[tid] = 0.f;
  }
  // The queries, a warp per pair, in 16-byte pieces (head_dim % 4 == 0 and
  // q 16-byte aligned on this path): short blocks (many splits) spend a
  // good part of their time here.
  for (int m = warp; m < kPairs; m += kMmaWarps) {
    const int rr = m / g.pair_heads, hh = m % g.pair_heads;
    const bool ok = rr < nrows && hh < nh;
    const float* src = g.q + (ok ? (static_cast<size_t>(row0 + rr) * s.num_heads + h0 + hh) * s.head_dim : 0);
    for (int d = 4 * lane; d < d8; d += 128) {
      *reinterpret_cast<float4*>(qs + m * qpitch + d) =
          ok && d < s.head_dim ? *reinterpret_cast<const float4*>(src + d) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
  }
  const int kpad = d8 - s.head_dim;
  for (int i = tid; i < 2 * kMmaKeys * kpad; i += kMmaThreads) ks[(i / kpad) * kpitch + s.head_dim + i % kpad] = T(0);
  __syncthreads();

  // The block's keys: from the smallest first key to the largest last one.
  int lo = INT_MAX, hi = -1;
  for (int m = 0; m < kPairs; ++m) {
    if (pair_hi[m] >= 0) lo = min(lo, pair_lo[m]), hi = max(hi, pair_hi[m]);
  }
  const int chunk = hi < 0 ? 0 : ((hi - lo + g.splits) / g.splits + kMmaKeys - 1) / kMmaKeys * kMmaKeys;
  const int first = lo + split * chunk, last = min(hi, first + chunk - 1);

  // Value n-tiles of this warp.
  const int tiles_v = v8 / 8, per_warp = (tiles_v + 3) / 4;
  const int nt0 = quarter * per_warp, nts = max(0, min(per_warp, tiles_v - nt0));
  const int mq = 16 * mt + gq;  // this lane's pairs: mq and mq + 8
  float acc[kNT][4];
#pragma unroll
  for (int i = 0; i < kNT; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;

  const int tiles = hi >= 0 && first <= last ? (last - first + kMmaKeys) / kMmaKeys : 0;
  const int page0 = g.rows.page_offsets[row0];
  // Whole tiles: keys past the chunk are zeros, so that weights of 0 never
  // meet stale values.
  auto load = [&](int tile) {
    LoadKvTile<kMmaThreads, kMmaKeys>(g, page0, kvh, first, last, tile, true, ks, kpitch, vs, vpitch);
  };
  if (tiles > 0) load(0);
  for (int tile = 0; tile < tiles; ++tile) {
    AwaitKvTile(tile, tiles, load);
    const int t0 = first + tile * kMmaKeys;
    const T* kt = ks + (tile & 1) * kMmaKeys * kpitch;
    const T* vt = vs + (tile & 1) * kMmaKeys * vpitch;
    {
      // Four independent sums over the k steps: one chain of dependent
      // mma.sync would leave the tensor cores waiting on their own latency.
      float c4[4][4] = {};
      const T* krow = kt + (8 * quarter + gq) * kpitch;
      int k0 = 0;
      for (; k0 + 32 <= d8; k0 += 32) {
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const int k = k0 + 8 * u;
          const unsigned a[4] = {ToTf32(qs[mq * qpitch + k + tq]), ToTf32(qs[(mq + 8) * qpitch + k + tq]),
                                 ToTf32(qs[mq * qpitch + k + tq + 4]), ToTf32(qs[(mq + 8) * qpitch + k + tq + 4])};
          MmaTf32(c4[u], a, ToTf32(Widen(krow[k + tq])), ToTf32(Widen(krow[k + tq + 4])));
        }
      }
      for (int u = 0; k0 < d8; k0 += 8, ++u) {
        const unsigned a[4] = {ToTf32(qs[mq * qpitch + k0 + tq]), ToTf32(qs[(mq + 8) * qpitch + k0 + tq]),
                               ToTf32(qs[mq * qpitch + k0 + tq + 4]), ToTf32(qs[(mq + 8) * qpitch + k0 + tq + 4])};
        MmaTf32(c4[u], a, ToTf32(Widen(krow[k0 + tq])), ToTf32(Widen(krow[k0 + tq + 4])));
      }
      // c4: pairs mq and mq + 8, keys 8 quarter + 2tq and + 1 of the tile.
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int m = mq + (e >= 2 ? 8 : 0), key = 8 * quarter + 2 * tq + (e & 1), pos = t0 + key;
        const bool in = pos >= pair_lo[m] && pos <= pair_hi[m] && pos <= last;
        sp[m * spitch + key] = in ? ((c4[0][e] + c4[1][e]) + (c4[2][e] + c4[3][e])) * s.scale : -INFINITY;
      }
    }
    __syncthreads();
    for (int m = warp; m < kPairs; m += kMmaWarps) {
      sp[m * spitch + lane] = OnlineSoftmaxStep(sp[m * spitch + lane], &sm[m], &sl[m], &sc[m]);
    }
    __syncthreads();
    {
      const float corr_lo = sc[mq], corr_hi = sc[mq + 8];
#pragma unroll
      for (int i = 0; i < kNT; ++i) {
        acc[i][0] *= corr_lo, acc[i][1] *= corr_lo, acc[i][2] *= corr_hi, acc[i][3] *= corr_hi;
      }
      for (int k0 = 0; k0 < kMmaKeys; k0 += 8) {
        const unsigned a[4] = {ToTf32(sp[mq * spitch + k0 + tq]), ToTf32(sp[(mq + 8) * spitch + k0 + tq]),
                               ToTf32(sp[mq * spitch + k0 + tq + 4]), ToTf32(sp[(mq + 8) * spitch + k0 + tq + 4])};
        const T* v0 = vt + (k0 + tq) * vpitch;
        const T* v1 = vt + (k0 + tq + 4) * vpitch;
#pragma unroll
        for (int i = 0; i < kNT; ++i) {
          if (i < nts) {
            const int n = 8 * (nt0 + i) + gq;
            MmaTf32(acc[i], a, ToTf32(Widen(v0[n])), ToTf32(Widen(v1[n])));
          }
        }
      }
    }
    __syncthreads();  // the next tile's copy reuses this buffer
  }

  // acc[i]: pairs mq, mq + 8; columns 8 (nt0 + i) + 2tq and + 1. Each
  // pair's head, once (a division by a variable is dozens of instructions).
  size_t pair_head[2];
  bool live[2];
  float inv_sum[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int m = mq + 8 * h;
    pair_head[h] = static_cast<size_t>(row0 + m / g.pair_heads) * s.num_heads + h0 + m % g.pair_heads;
    live[h] = pair_hi[m] >= 0;
    inv_sum[h] = sl[m] > 0 ? g.out_scale / sl[m] : 0.f;
  }
#pragma unroll
  for (int i = 0; i < kNT; ++i) {
    if (i >= nts) continue;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int h = e >> 1, d = 8 * (nt0 + i) + 2 * tq + (e & 1);
      if (!live[h] || d >= s.v_head_dim) continue;
      if (g.splits == 1) {
        g.out[pair_head[h] * s.v_head_dim + d] = acc[i][e] * inv_sum[h];
      } else {
        g.part_acc[(pair_head[h] * g.splits + split) * g.vpad + d] = acc[i][e];
      }
    }
  }
  if (g.splits > 1 && tid < kPairs && pair_hi[tid] >= 0) {
    const size_t head =
        static_cast<size_t>(row0 + tid / g.pair_heads) * s.num_heads + h0 + tid % g.pair_heads;
    const size_t at = (head * g.splits + split) * 2;
    g.part_ml[at] = sm[tid];
    g.part_ml[at + 1] = sl[tid];
  }
}

// Merges the splits of (row blockIdx.x, or row_ids[blockIdx.x], head
// blockIdx.y); a split without keys has max -inf and adds nothing.
__global__ void __launch_bounds__(kThreads) CombineKernel(Geometry g) {
  __shared__ float weight[kMaxSplits];
  __shared__ float inv_sum;
  const int r = g.row_ids != nullptr ? g.row_ids[blockIdx.x] : blockIdx.x;
  const size_t head = static_cast<size_t>(r) * g.s.num_heads + blockIdx.y;
  const float* ml = g.part_ml + head * g.splits * 2;
  if (threadIdx.x < 32) {
    float mx = -INFINITY;
    for (int s = threadIdx.x; s < g.splits; s += 32) mx = fmaxf(mx, ml[2 * s]);
    mx = WarpMax(mx);
    float sum = 0.f;
    for (int s = threadIdx.x; s < g.splits; s += 32) {
      const float w = ml[2 * s] == -INFINITY ? 0.f : expf(ml[2 * s] - mx);
      weight[s] = w;
      sum += w * ml[2 * s + 1];
    }
    sum = WarpSum(sum);
    if (threadIdx.x == 0) inv_sum = sum > 0 ? g.out_scale / sum : 0.f;
  }
  __syncthreads();
  const float* acc = g.part_acc + head * g.splits * g.vpad;
  for (int d = threadIdx.x; d < g.s.v_head_dim; d += kThreads) {
    float num = 0.f;
    for (int s = 0; s < g.splits; ++s) num += weight[s] * acc[static_cast<size_t>(s) * g.vpad + d];
    g.out[head * g.s.v_head_dim + d] = num * inv_sum;
  }
}

struct Config {
  int heads, keys;  // per block, per tile
  void (*kernel)(Geometry);
};

template <typename T>
Config Pick(int widest) {
  if (widest <= 128) return {8, 32, SplitKernel<32, 8, 32, T>};
  if (widest <= 256) return {8, 32, SplitKernel<64, 8, 32, T>};
  static_assert(kMaxAttentionHeadDim == 4 * 160, "the widest instantiation");
  return {16, 16, SplitKernel<160, 16, 16, T>};
}

// The kernels for the cache's element type.
struct Kernels {
  Config (*pick)(int widest);
  void (*mma)(Geometry);
};
Kernels KernelsFor(KvDType dtype) {
  constexpr int kNT = kMaxLatentDim / 8 / 4;
  switch (dtype) {
    case KvDType::kBf16: return {Pick<uint16_t>, MmaKernel<kNT, uint16_t>};
    case KvDType::kF8E4M3: return {Pick<uint8_t>, MmaKernel<kNT, uint8_t>};
    case KvDType::kF32: break;
  }
  return {Pick<float>, MmaKernel<kNT, float>};
}

int RoundUp4(int v) { return (v + 3) / 4 * 4; }

}  // namespace

CudaPagedAttention::CudaPagedAttention() = default;
CudaPagedAttention::~CudaPagedAttention() = default;

absl::Status CudaPagedAttention::UploadTiles(absl::Span<const RowSpan> sequences, int per_tile, bool singles_apart,
                                             CudaStream stream) {
  std::vector<int> tiles, singles;
  for (const RowSpan& span : sequences) {
    if (singles_apart && span.count == 1) {
      singles.push_back(span.first_row);
      continue;
    }
    for (int r = 0; r < span.count; r += per_tile) {
      tiles.push_back(span.first_row + r);
      tiles.push_back(std::min(per_tile, span.count - r));
    }
  }
  const int num_tiles = static_cast<int>(tiles.size() / 2);
  tiles.insert(tiles.end(), singles.begin(), singles.end());
  // The layers of a step ask for the same tiles: copy them once.
  if (tiles != tiles_host_ || num_tiles != num_tiles_) {
    tiles_host_.clear();  // until the copy is queued
    MM_RETURN_IF_ERROR(GrowBuffer(&tiles_, tiles.size() * sizeof(int)));  // cudaFree waits for its readers
    MM_RETURN_IF_ERROR(CopyToDeviceAsync(tiles_->data(), tiles.data(), tiles.size() * sizeof(int), stream));
    tiles_host_ = std::move(tiles);
    num_tiles_ = num_tiles;
  }
  return absl::OkStatus();
}

absl::Status CudaPagedAttention::Run(const AttentionShape& s, const float* q, const PagedRows& rows, float* out,
                                     CudaStream stream, absl::Span<const RowSpan> sequences) {
  if (s.num_heads <= 0 || s.num_kv_heads <= 0 || s.num_heads % s.num_kv_heads != 0) {
    return absl::InvalidArgumentError("CudaPagedAttention: num_kv_heads must divide num_heads");
  }
  if (s.head_dim <= 0 || s.head_dim > kMaxAttentionHeadDim || s.v_head_dim <= 0 ||
      s.v_head_dim > kMaxAttentionHeadDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("CudaPagedAttention: head sizes must be in [1, ", kMaxAttentionHeadDim, "]"));
  }
  const CudaKvPages& kv = rows.kv;
  if (rows.rows < 0 || rows.max_position < 0 || kv.block_size <= 0 || kv.k_stride <= 0 || kv.v_stride <= 0 ||
      kv.k_offset < 0 || kv.v_offset < 0) {
    return absl::InvalidArgumentError("CudaPagedAttention: bad sizes");
  }
  const bool fp8 = kv.dtype == KvDType::kF8E4M3;
  if (fp8 && !(kv.k_scale > 0 && kv.v_scale > 0 && std::isfinite(kv.k_scale) && std::isfinite(kv.v_scale))) {
    return absl::InvalidArgumentError("CudaPagedAttention: FP8 scales must be positive and finite");
  }
  if (rows.rows == 0) return absl::OkStatus();
  if (!sequences.empty()) {
    // They must cover every row once, in order.
    int next = 0;
    for (const RowSpan& span : sequences) {
      if (span.first_row != next || span.count < 1 || span.count > rows.rows - next) {
        return absl::InvalidArgumentError("CudaPagedAttention: `sequences` must cover the rows once, in order");
      }
      next += span.count;
    }
    if (next != rows.rows) {
      return absl::InvalidArgumentError("CudaPagedAttention: `sequences` must cover the rows once, in order");
    }
  }
  // Prompt chunks over a bf16 cache: FlashAttention-2's layout (its own
  // kernel, which needs none of the geometry below). The step's decode
  // rows go to FlashDecodeCuda (below) where it takes them: as 1-row tiles
  // they would read their keys once per query head, on idle warps.
  bool chunks = false;
  for (const RowSpan& span : sequences) chunks |= span.count > 1;
  const bool decodes = flash_decode_ && FlashDecodeFits(s, rows, q);
  const int* decode_rows = nullptr;  // rows FlashDecodeCuda takes (null: all)
  int num_decode_rows = rows.rows;
  if (chunks && FlashPrefillFits(s, rows, q)) {
    MM_RETURN_IF_ERROR(UploadTiles(sequences, kFlashPrefillRows, decodes, stream));
    MM_RETURN_IF_ERROR(
        FlashPrefillCuda(s, q, rows, tiles_->as<int>(), num_tiles_, out, stream, flash_warp_rows_));
    num_decode_rows = static_cast<int>(tiles_host_.size()) - 2 * num_tiles_;
    if (num_decode_rows == 0) return absl::OkStatus();
    decode_rows = tiles_->as<int>() + 2 * num_tiles_;
  }
  Geometry g;
  g.s = s;
  g.rows = rows;
  g.q = q;
  g.out = out;
  g.group = s.num_heads / s.num_kv_heads;
  g.row_ids = nullptr;
  // An FP8 key's scale goes into the scores' scale, a value's into the output.
  if (fp8) g.s.scale *= kv.k_scale;
  g.out_scale = fp8 ? kv.v_scale : 1.f;
  const int elem = KvDTypeBytes(kv.dtype), per = 16 / elem;
  const Kernels kernels = KernelsFor(kv.dtype);
  Config config = kernels.pick(std::max(s.head_dim, s.v_head_dim));
  g.head_groups = (g.group + config.heads - 1) / config.heads;
  g.dpad = RoundUp4(s.head_dim);
  g.vpad = RoundUp4(s.v_head_dim);
  g.kpitch = RoundUp(g.dpad, per) + per;
  g.v_in_k = kv.k_blocks == kv.v_blocks && kv.k_stride == kv.v_stride && kv.k_offset == kv.v_offset &&
             s.v_head_dim <= s.head_dim && (s.num_kv_heads == 1 || s.head_dim == s.v_head_dim);
  g.vpitch = g.v_in_k ? g.kpitch : RoundUp(g.vpad, per) + per;
  g.aligned = (kv.k_stride | kv.v_stride | kv.k_offset | kv.v_offset | s.head_dim | s.v_head_dim) % per == 0;
  SetMmaPitches(&g, elem);

  if (sm_count_ == 0) {
    int device = 0;
    MM_RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&device), "cudaGetDevice"));
    MM_RETURN_IF_ERROR(
        CudaStatus(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device), "SM count"));
    MM_RETURN_IF_ERROR(CudaStatus(
        cudaDeviceGetAttribute(&smem_limit_, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "shared memory"));
  }
  // Several chunks of each row's keys run as separate blocks when that
  // fills the GPU better (`blocks` of them without, `per_sm` at once on
  // each multiprocessor, `tile_keys` keys at least a chunk); the merge
  // runs after them. By default enough to fill the GPU twice over; with
  // `whole_waves` (blocks of equal work, that keep the memory system
  // busy), the fewest whose last wave is 90% full: a GPU waiting on a last
  // wave's few blocks reads at their rate alone (at 8 x 4K keys, 2.2 waves
  // gave 57% of copy bandwidth), and each further wave of blocks starts
  // its pipeline again.
  auto split = [&](long long blocks, int per_sm, int tile_keys, bool whole_waves) -> absl::Status {
    const int keys =
        s.sliding_window > 0 ? std::min(rows.max_position + 1, s.sliding_window) : rows.max_position + 1;
    const long long wave = static_cast<long long>(std::max(per_sm, 1)) * sm_count_;
    const long long most = std::min<long long>(kMaxSplits, (keys + tile_keys - 1) / tile_keys);
    long long splits = std::clamp<long long>((2 * wave + blocks - 1) / blocks, 1, most);
    if (whole_waves) {
      const long long once = std::clamp<long long>((wave + blocks - 1) / blocks, 1, most);
      double best = 0;
      for (long long n = 1; n <= std::min(most, 4 * once); ++n) {
        const double waves = static_cast<double>(blocks * n) / wave, full = waves / std::ceil(waves);
        if (full > best) best = full, splits = n;
        if (full >= 0.9) break;
      }
    }
    g.splits = static_cast<int>(splits);
    g.part_acc = g.part_ml = nullptr;
    if (g.splits > 1) {
      const size_t heads = static_cast<size_t>(rows.rows) * s.num_heads * g.splits;
      const size_t bytes = heads * (g.vpad + 2) * sizeof(float);
      MM_RETURN_IF_ERROR(GrowBuffer(&partials_, bytes));  // cudaFree waits for kernels that may still use it
      g.part_acc = partials_->as<float>();
      g.part_ml = g.part_acc + heads * g.vpad;
    }
    return absl::OkStatus();
  };
  auto merge = [&](int num_rows) -> absl::Status {
    if (g.splits == 1) return absl::OkStatus();
    CombineKernel<<<dim3(num_rows, s.num_heads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(g);
    return LaunchStatus("attention CombineKernel");
  };
  // Decode rows over a bf16 cache of GQA rows: their own kernel, which
  // keeps more of the cache in flight.
  if (decodes && (!chunks || decode_rows != nullptr)) {
    MM_ASSIGN_OR_RETURN(const int per_sm, FlashDecodeBlocksPerSm(s));
    MM_RETURN_IF_ERROR(split(static_cast<long long>(num_decode_rows) * s.num_kv_heads, per_sm, kFlashDecodeKeys,
                             /*whole_waves=*/true));
    g.row_ids = decode_rows;
    MM_RETURN_IF_ERROR(FlashDecodeCuda(s, q, rows, decode_rows, num_decode_rows, out, g.splits, g.part_acc,
                                       g.part_ml, stream));
    return merge(num_decode_rows);
  }
  // The tensor-core kernel: for many heads over rows that hold V too
  // (latent attention), 32 heads of a row a block; for prompts, the group's
  // heads of 32 / group consecutive rows of one sequence a block.
  g.tiles = nullptr;
  g.pair_heads = 0;
  int grid_x = rows.rows;
  // Only where its shared memory fits this GPU (else the CUDA-core kernel).
  const bool mma_fits = MmaSmemBytes(g, elem) <= static_cast<size_t>(smem_limit_);
  // It reads whole float4s of the cache and of q.
  const bool mma_aligned = g.aligned && reinterpret_cast<uintptr_t>(q) % 16 == 0;
  const bool latent = g.v_in_k && mma_aligned && g.group >= 16 && s.v_head_dim <= s.head_dim &&
                      RoundUp8(s.head_dim) <= kMaxLatentDim && mma_fits;
  bool prefill = false;
  if (!latent && mma_aligned && kPairs % g.group == 0 &&
      RoundUp8(std::max(s.head_dim, s.v_head_dim)) <= kMaxPrefillDim && mma_fits) {
    for (const RowSpan& span : sequences) prefill |= span.count > 1;
  }
  if (latent) {
    g.pair_heads = kPairs;
    g.head_groups = (g.group + kPairs - 1) / kPairs;
  } else if (prefill) {
    g.pair_heads = g.group;
    g.head_groups = 1;
    MM_RETURN_IF_ERROR(UploadTiles(sequences, kPairs / g.group, /*singles_apart=*/false, stream));
    g.tiles = tiles_->as<int>();
    grid_x = num_tiles_;
  }
  const bool mma = latent || prefill;
  if (mma) config = {kPairs, kMmaKeys, kernels.mma};
  const int threads = mma ? kMmaThreads : kThreads;
  const size_t smem = mma ? MmaSmemBytes(g, elem) : SmemBytes(g, elem, config.heads, config.keys);
  if (smem > static_cast<size_t>(smem_limit_)) {
    return absl::InvalidArgumentError(absl::StrCat("CudaPagedAttention: heads of ", s.head_dim, " need ", smem,
                                                   " bytes of shared memory; this GPU has ", smem_limit_));
  }
  // Always the device's limit: the attribute belongs to the kernel, not to
  // this instance, and another thread's call must not lower it under us.
  MM_RETURN_IF_ERROR(CudaStatus(
      cudaFuncSetAttribute(config.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_limit_),
      "CudaPagedAttention: shared memory"));
  int per_sm = 0;
  MM_RETURN_IF_ERROR(CudaStatus(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, config.kernel, threads, smem), "occupancy"));
  MM_RETURN_IF_ERROR(
      split(static_cast<long long>(grid_x) * s.num_kv_heads * g.head_groups, per_sm, config.keys, false));
  if (s.num_kv_heads * g.head_groups > 65535 || s.num_heads > 65535) {
    return absl::InvalidArgumentError("CudaPagedAttention: too many heads");
  }
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  config.kernel<<<dim3(grid_x, s.num_kv_heads * g.head_groups, g.splits), threads, smem, st>>>(g);
  MM_RETURN_IF_ERROR(LaunchStatus("attention SplitKernel"));
  return merge(rows.rows);
}

}  // namespace moemesh
