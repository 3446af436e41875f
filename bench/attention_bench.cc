// Attention on the GPU (CudaPagedAttention) over the paged KV cache in each
// of its types (fp32, bf16, FP8 e4m3), at Mixtral's shape (32 heads over 8
// KV heads of 128) and DeepSeek-V3's latent shape (128 heads over one
// shared 576-wide row, values its first 512).
//   Decode: one new token per sequence attending to its whole context, for
//   a batch of sequences in one call (timed as 8 calls back to back, as a
//   model's layers make them, over 8). Achieved bandwidth counts each KV byte
//   once (the least a decode step must read) and is set against the copy
//   bandwidth measured in the same run.
//   Prefill: one prompt in one call, as TFLOP/s of the causal products,
//   set against a large bf16 GEMM through cuBLAS measured in the same run.
// Run on the GPU machine (tools/gpu/run.sh bench).
//   attention_bench [--dtypes f32,bf16,fp8] [--prefill-tokens 1024,4096,16384]
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/common/status_macros.h"
#include "core/kernels/cuda/attention.h"
#include "core/kernels/cuda/ceilings.h"
#include "core/kernels/cuda/cuda_runtime_util.h"
#include "core/kernels/cuda/dense.h"

namespace moemesh {
namespace {

struct Shape {
  const char* name;
  AttentionShape attn;
  bool latent;  // V is the first v_head_dim elements of the K row

  // Elements of a cache row: K of every KV head, then V unless latent.
  int k_width() const { return attn.num_kv_heads * attn.head_dim; }
  int row() const { return k_width() + (latent ? 0 : attn.num_kv_heads * attn.v_head_dim); }
};

// A cache pool, a call's page table and rows on the device, and the
// PagedRows over them.
struct DeviceRows {
  std::unique_ptr<DeviceBuffer> pool, pages, positions, offsets;
  PagedRows rows;
};

template <typename T>
absl::StatusOr<std::unique_ptr<DeviceBuffer>> Upload(const std::vector<T>& v) {
  auto b = DeviceBuffer::Allocate(v.size() * sizeof(T));
  if (!b.ok()) return b.status();
  if (absl::Status st = (*b)->CopyFrom(v.data(), v.size() * sizeof(T)); !st.ok()) return st;
  return std::move(*b);
}

// `blocks` blocks of `block` rows of `sh`'s layout, random values stored
// as `dtype` (through the cache's own store kernel), and rows at
// `positions` whose sequences' pages start at `offsets` in a table that
// lists each sequence's blocks in reverse (pages not simply contiguous).
absl::StatusOr<DeviceRows> MakeRows(const Shape& sh, KvDType dtype, int block, int blocks, int blocks_per_seq,
                                    const std::vector<int>& positions, const std::vector<int>& offsets) {
  DeviceRows d;
  const size_t elem = KvDTypeBytes(dtype), rows = static_cast<size_t>(blocks) * block;
  auto pool = DeviceBuffer::Allocate(rows * sh.row() * elem);
  if (!pool.ok()) return pool.status();
  d.pool = std::move(*pool);
  {
    // In pieces of 64K rows: the fp32 source stays small.
    const size_t piece = 65536;
    auto src = DeviceBuffer::Allocate(piece * sh.row() * sizeof(float));
    if (!src.ok()) return src.status();
    if (absl::Status st = FillRandomF32((*src)->as<float>(), piece * sh.row(), 1); !st.ok()) return st;
    std::vector<void*> dst(piece);
    auto ddst = DeviceBuffer::Allocate(piece * sizeof(void*));
    if (!ddst.ok()) return ddst.status();
    KvStore store;
    store.dtype = dtype;
    for (size_t r0 = 0; r0 < rows; r0 += piece) {
      const size_t n = std::min(piece, rows - r0);
      for (size_t i = 0; i < n; ++i) dst[i] = d.pool->as<char>() + (r0 + i) * sh.row() * elem;
      if (absl::Status st = (*ddst)->CopyFrom(dst.data(), n * sizeof(void*)); !st.ok()) return st;
      if (absl::Status st = ScatterKvRowsCuda((*src)->as<float>(), sh.row(), (*ddst)->as<void*>(), nullptr, 0,
                                              nullptr, static_cast<int>(n), store, nullptr);
          !st.ok()) {
        return st;
      }
      if (absl::Status st = CudaSynchronize(nullptr); !st.ok()) return st;
    }
  }
  std::vector<const void*> table(blocks);
  for (int b = 0; b < blocks; ++b) {
    const int seq = b / blocks_per_seq, within = b % blocks_per_seq;
    table[b] = d.pool->as<char>() +
               (static_cast<size_t>(seq) * blocks_per_seq + (blocks_per_seq - 1 - within)) * block * sh.row() * elem;
  }
  auto pages = Upload(table);
  auto pos = Upload(positions);
  auto off = Upload(offsets);
  if (!pages.ok()) return pages.status();
  if (!pos.ok()) return pos.status();
  if (!off.ok()) return off.status();
  d.pages = std::move(*pages);
  d.positions = std::move(*pos);
  d.offsets = std::move(*off);
  d.rows.kv.k_blocks = d.rows.kv.v_blocks = d.pages->as<const void*>();
  d.rows.kv.block_size = block;
  d.rows.kv.k_stride = d.rows.kv.v_stride = sh.row();
  d.rows.kv.k_offset = 0;
  d.rows.kv.v_offset = sh.latent ? 0 : sh.k_width();
  d.rows.kv.dtype = dtype;
  d.rows.positions = d.positions->as<int>();
  d.rows.page_offsets = d.offsets->as<int>();
  d.rows.rows = static_cast<int>(positions.size());
  d.rows.max_position = *std::max_element(positions.begin(), positions.end());
  return d;
}

bool ParseList(const char* flag, const char* value, std::vector<std::string>* out) {
  *out = absl::StrSplit(value, ',', absl::SkipEmpty());
  if (out->empty()) std::fprintf(stderr, "attention_bench: %s needs a list\n", flag);
  return !out->empty();
}

int Fail(const absl::Status& st) {
  std::fprintf(stderr, "attention_bench: %s\n", std::string(st.message()).c_str());
  return 1;
}

int Main(int argc, char** argv) {
  std::vector<KvDType> dtypes = {KvDType::kF32, KvDType::kBf16, KvDType::kF8E4M3};
  std::vector<int> prefill_tokens = {1024, 4096, 16384};
  for (int i = 1; i < argc; ++i) {
    std::vector<std::string> list;
    if (std::strcmp(argv[i], "--dtypes") == 0 && i + 1 < argc) {
      if (!ParseList("--dtypes", argv[++i], &list)) return 2;
      dtypes.clear();
      for (const std::string& d : list) {
        auto t = ParseKvCacheDType(d == "f32" ? "float32" : d == "bf16" ? "bfloat16" : d, /*gpu=*/true);
        if (!t.ok()) return Fail(t.status());
        dtypes.push_back(*t);
      }
    } else if (std::strcmp(argv[i], "--prefill-tokens") == 0 && i + 1 < argc) {
      if (!ParseList("--prefill-tokens", argv[++i], &list)) return 2;
      prefill_tokens.clear();
      for (const std::string& t : list) {
        int n = 0;
        if (!absl::SimpleAtoi(t, &n) || n < 1) return Fail(absl::InvalidArgumentError("bad --prefill-tokens"));
        prefill_tokens.push_back(n);
      }
    } else {
      std::fprintf(stderr, "usage: attention_bench [--dtypes f32,bf16,fp8] [--prefill-tokens 1024,4096]\n");
      return 2;
    }
  }
  if (CudaDeviceCount() == 0) {
    std::fprintf(stderr, "attention_bench: no CUDA device\n");
    return 1;
  }
  auto bw = MeasureCopyBandwidth(size_t{4} << 30);
  if (!bw.ok()) return Fail(bw.status());
  auto gemm = MeasureBf16GemmFlops(8192, 8192, 8192, 1.0);
  if (!gemm.ok()) return Fail(gemm.status());
  std::printf("ceilings: copy %.2f TB/s, bf16 GEMM %.0f TFLOP/s; KV cache blocks of 16 positions\n", *bw / 1e12,
              *gemm / 1e12);
  std::printf("decode (/cc: the CUDA-core kernel FlashDecodeCuda replaced)\n%-12s %-8s %6s %8s %10s %8s %7s\n", "shape", "cache", "batch", "context", "ms", "TB/s", "%BW");
  const Shape shapes[] = {{"mixtral", {32, 8, 128, 128, 0.0884f, 0}, false},
                          {"deepseek-v3", {128, 1, 576, 512, 0.0417f, 0}, true}};
  constexpr int kBlock = 16, kBackToBack = 8;
  for (const Shape& sh : shapes) {
    const AttentionShape& a = sh.attn;
    for (KvDType dtype : dtypes) {
      for (auto [batch, context] :
           std::vector<std::pair<int, int>>{{1, 4096}, {1, 32768}, {8, 4096}, {32, 4096}, {64, 2048}}) {
        const int blocks_per_seq = (context + kBlock - 1) / kBlock;
        std::vector<int> positions(batch, context - 1), page_offsets(batch);
        for (int s = 0; s < batch; ++s) page_offsets[s] = s * blocks_per_seq;
        auto dev = MakeRows(sh, dtype, kBlock, batch * blocks_per_seq, blocks_per_seq, positions, page_offsets);
        auto q = DeviceBuffer::Allocate(static_cast<size_t>(batch) * a.num_heads * a.head_dim * sizeof(float));
        auto out = DeviceBuffer::Allocate(static_cast<size_t>(batch) * a.num_heads * a.v_head_dim * sizeof(float));
        if (!dev.ok()) return Fail(dev.status());
        if (!q.ok() || !out.ok()) return 1;
        if (!FillRandomF32((*q)->as<float>(), static_cast<size_t>(batch) * a.num_heads * a.head_dim, 2).ok()) return 1;
        const PagedRows& rows = dev->rows;
        // A bf16 cache of GQA rows: FlashDecodeCuda, then the CUDA-core
        // kernel it replaced ("/cc").
        const bool flash = dtype == KvDType::kBf16 && !sh.latent;
        for (bool flash_decode : flash ? std::vector<bool>{true, false} : std::vector<bool>{true}) {
          CudaPagedAttention attention;
          attention.set_flash_decode(flash_decode);
          // Calls back to back, as a model's layers make them: the host's
          // work for one call overlaps the GPU's for the one before.
          auto step = [&]() -> absl::Status {
            for (int i = 0; i < kBackToBack; ++i) {
              MM_RETURN_IF_ERROR(attention.Run(a, (*q)->as<float>(), rows, (*out)->as<float>(), nullptr));
            }
            return absl::OkStatus();
          };
          auto t = TimeOnGpu(step, 2, 10);
          if (!t.ok()) return Fail(t.status());
          *t /= kBackToBack;
          const double bytes = static_cast<double>(batch) * context * sh.row() * KvDTypeBytes(dtype);
          const std::string cache = std::string(KvDTypeName(dtype)) + (flash && !flash_decode ? "/cc" : "");
          std::printf("%-12s %-8s %6d %8d %10.3f %8.2f %6.1f%%\n", sh.name, cache.c_str(), batch, context, *t * 1e3,
                      bytes / *t / 1e12, 100 * bytes / *t / *bw);
        }
      }
    }
  }
  // Prefill: every position of one prompt attends to those before it, in
  // one call: heads * n (n + 1) / 2 * (d_k + d_v) * 2 FLOP.
  std::printf("\nprefill, one prompt (/wN: FlashAttention-2's kernel, N rows a warp)\n%-12s %-8s %8s %10s %9s %7s\n", "shape", "cache", "tokens", "ms", "TFLOP/s",
              "%GEMM");
  for (const Shape& sh : shapes) {
    const AttentionShape& a = sh.attn;
    for (KvDType dtype : dtypes) {
      for (int tokens : prefill_tokens) {
        const int blocks = (tokens + kBlock - 1) / kBlock;
        std::vector<int> positions(tokens), offsets(tokens, 0);
        for (int i = 0; i < tokens; ++i) positions[i] = i;
        auto dev = MakeRows(sh, dtype, kBlock, blocks, blocks, positions, offsets);
        auto q = DeviceBuffer::Allocate(static_cast<size_t>(tokens) * a.num_heads * a.head_dim * sizeof(float));
        auto out = DeviceBuffer::Allocate(static_cast<size_t>(tokens) * a.num_heads * a.v_head_dim * sizeof(float));
        if (!dev.ok()) return Fail(dev.status());
        if (!q.ok() || !out.ok()) return 1;
        if (!FillRandomF32((*q)->as<float>(), static_cast<size_t>(tokens) * a.num_heads * a.head_dim, 4).ok()) {
          return 1;
        }
        const PagedRows& rows = dev->rows;
        const RowSpan prompt{0, tokens};
        // FlashAttention-2's kernel (a bf16 cache of GQA rows) with each
        // count of rows a warp.
        const bool flash = dtype == KvDType::kBf16 && !sh.latent;
        for (int warp_rows : flash ? std::vector<int>{16, 32} : std::vector<int>{0}) {
          CudaPagedAttention attention;
          attention.set_flash_warp_rows(warp_rows);
          auto t = TimeOnGpu(
              [&] { return attention.Run(a, (*q)->as<float>(), rows, (*out)->as<float>(), nullptr, {&prompt, 1}); },
              1, 3);
          if (!t.ok()) return Fail(t.status());
          const double flops = 2.0 * a.num_heads * (static_cast<double>(tokens) * (tokens + 1) / 2) *
                               (a.head_dim + a.v_head_dim);
          const std::string cache =
              std::string(KvDTypeName(dtype)) + (warp_rows ? absl::StrCat("/w", warp_rows) : std::string());
          std::printf("%-12s %-8s %8d %10.3f %9.1f %6.1f%%\n", sh.name, cache.c_str(), tokens, *t * 1e3,
                      flops / *t / 1e12, 100 * flops / *t / *gemm);
        }
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) { return moemesh::Main(argc, argv); }
