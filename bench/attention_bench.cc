// Decode attention on the GPU (CudaPagedAttention): one new token per
// sequence attending to its whole context in the paged fp32 KV cache, for a
// batch of sequences in one call, at Mixtral's shape (32 heads over 8 KV heads of 128)
// and DeepSeek-V3's latent shape (128 heads over one shared 576-wide row,
// values its first 512). Achieved bandwidth counts each KV byte once (the
// least a decode step must read) and is set against the copy bandwidth
// measured in the same run. Then prefill: one prompt of 1,024 and 4,096
// tokens in one call, as TFLOP/s. Run on the GPU machine (tools/gpu/run.sh
// bench).
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "core/kernels/cuda/attention.h"
#include "core/kernels/cuda/ceilings.h"
#include "core/kernels/cuda/cuda_runtime_util.h"

namespace moemesh {
namespace {

struct Shape {
  const char* name;
  AttentionShape attn;
  bool latent;  // V is the first v_head_dim floats of the K row

  // Floats of a cache row: K of every KV head, then V unless latent.
  int k_width() const { return attn.num_kv_heads * attn.head_dim; }
  int row() const { return k_width() + (latent ? 0 : attn.num_kv_heads * attn.v_head_dim); }
};

// A call's page table and rows on the device, and the PagedRows over them.
struct DeviceRows {
  std::unique_ptr<DeviceBuffer> pages, positions, offsets;
  PagedRows rows;
};

template <typename T>
absl::StatusOr<std::unique_ptr<DeviceBuffer>> Upload(const std::vector<T>& v) {
  auto b = DeviceBuffer::Allocate(v.size() * sizeof(T));
  if (!b.ok()) return b.status();
  if (absl::Status st = (*b)->CopyFrom(v.data(), v.size() * sizeof(T)); !st.ok()) return st;
  return std::move(*b);
}

// Rows of `sh`'s cache layout (K, then V unless latent) in blocks of `block`.
absl::StatusOr<DeviceRows> UploadRows(const Shape& sh, int block, const std::vector<const float*>& table,
                                      const std::vector<int>& positions, const std::vector<int>& offsets) {
  DeviceRows d;
  auto pages = Upload(table);
  auto pos = Upload(positions);
  auto off = Upload(offsets);
  if (!pages.ok()) return pages.status();
  if (!pos.ok()) return pos.status();
  if (!off.ok()) return off.status();
  d.pages = std::move(*pages);
  d.positions = std::move(*pos);
  d.offsets = std::move(*off);
  d.rows.kv.k_blocks = d.rows.kv.v_blocks = d.pages->as<const float*>();
  d.rows.kv.block_size = block;
  d.rows.kv.k_stride = d.rows.kv.v_stride = sh.row();
  d.rows.kv.k_offset = 0;
  d.rows.kv.v_offset = sh.latent ? 0 : sh.k_width();
  d.rows.positions = d.positions->as<int>();
  d.rows.page_offsets = d.offsets->as<int>();
  d.rows.rows = static_cast<int>(positions.size());
  d.rows.max_position = *std::max_element(positions.begin(), positions.end());
  return d;
}

int Main() {
  if (CudaDeviceCount() == 0) {
    std::fprintf(stderr, "attention_bench: no CUDA device\n");
    return 1;
  }
  auto bw = MeasureCopyBandwidth(size_t{4} << 30);
  if (!bw.ok()) return 1;
  std::printf("ceiling: copy %.2f TB/s; KV cache fp32, blocks of 16 positions\n", *bw / 1e12);
  std::printf("%-12s %6s %8s %10s %8s %7s\n", "shape", "batch", "context", "ms", "TB/s", "%BW");
  const Shape shapes[] = {{"mixtral", {32, 8, 128, 128, 0.0884f, 0}, false},
                          {"deepseek-v3", {128, 1, 576, 512, 0.0417f, 0}, true}};
  constexpr int kBlock = 16;
  for (const Shape& sh : shapes) {
    const AttentionShape& a = sh.attn;
    const int row = sh.row();
    for (auto [batch, context] : std::vector<std::pair<int, int>>{{1, 4096}, {1, 32768}, {32, 4096}, {64, 2048}}) {
      const int blocks_per_seq = (context + kBlock - 1) / kBlock;
      const size_t floats = static_cast<size_t>(batch) * blocks_per_seq * kBlock * row;
      auto pool = DeviceBuffer::Allocate(floats * sizeof(float));
      auto q = DeviceBuffer::Allocate(static_cast<size_t>(batch) * a.num_heads * a.head_dim * sizeof(float));
      auto out = DeviceBuffer::Allocate(static_cast<size_t>(batch) * a.num_heads * a.v_head_dim * sizeof(float));
      if (!pool.ok() || !q.ok() || !out.ok()) return 1;
      if (!FillRandomF32((*pool)->as<float>(), floats, 1).ok()) return 1;
      if (!FillRandomF32((*q)->as<float>(), static_cast<size_t>(batch) * a.num_heads * a.head_dim, 2).ok()) return 1;
      // Sequence s owns blocks [s * blocks_per_seq, (s + 1) * blocks_per_seq),
      // listed in reverse so that pages are not simply contiguous.
      std::vector<const float*> table(static_cast<size_t>(batch) * blocks_per_seq);
      for (int s = 0; s < batch; ++s) {
        for (int b = 0; b < blocks_per_seq; ++b) {
          table[static_cast<size_t>(s) * blocks_per_seq + b] =
              (*pool)->as<float>() +
              (static_cast<size_t>(s) * blocks_per_seq + (blocks_per_seq - 1 - b)) * kBlock * row;
        }
      }
      std::vector<int> positions(batch, context - 1), page_offsets(batch);
      for (int s = 0; s < batch; ++s) page_offsets[s] = s * blocks_per_seq;
      auto dev = UploadRows(sh, kBlock, table, positions, page_offsets);
      if (!dev.ok()) return 1;
      const PagedRows& rows = dev->rows;
      CudaPagedAttention attention;
      auto step = [&]() { return attention.Run(a, (*q)->as<float>(), rows, (*out)->as<float>(), nullptr); };
      auto t = TimeOnGpu(step, 2, 10);
      if (!t.ok()) {
        std::fprintf(stderr, "attention_bench: %s\n", std::string(t.status().message()).c_str());
        return 1;
      }
      const double bytes = static_cast<double>(batch) * context * row * sizeof(float);
      std::printf("%-12s %6d %8d %10.3f %8.2f %6.1f%%\n", sh.name, batch, context, *t * 1e3, bytes / *t / 1e12,
                  100 * bytes / *t / *bw);
    }
  }
  // Prefill: every position of one prompt attends to those before it, in
  // one call. Set against nothing yet: the figure is the achieved rate of
  // the causal products, heads * n (n + 1) / 2 * (d_k + d_v) * 2 FLOP.
  std::printf("\nprefill, one prompt\n%-12s %8s %10s %9s\n", "shape", "tokens", "ms", "TFLOP/s");
  for (const Shape& sh : shapes) {
    const AttentionShape& a = sh.attn;
    const int row = sh.row();
    for (int tokens : {1024, 4096}) {
      const int blocks = (tokens + kBlock - 1) / kBlock;
      auto pool = DeviceBuffer::Allocate(static_cast<size_t>(blocks) * kBlock * row * sizeof(float));
      auto q = DeviceBuffer::Allocate(static_cast<size_t>(tokens) * a.num_heads * a.head_dim * sizeof(float));
      auto out = DeviceBuffer::Allocate(static_cast<size_t>(tokens) * a.num_heads * a.v_head_dim * sizeof(float));
      if (!pool.ok() || !q.ok() || !out.ok()) return 1;
      if (!FillRandomF32((*pool)->as<float>(), static_cast<size_t>(blocks) * kBlock * row, 3).ok()) return 1;
      if (!FillRandomF32((*q)->as<float>(), static_cast<size_t>(tokens) * a.num_heads * a.head_dim, 4).ok()) return 1;
      std::vector<const float*> table(blocks);
      for (int b = 0; b < blocks; ++b) table[b] = (*pool)->as<float>() + static_cast<size_t>(b) * kBlock * row;
      std::vector<int> positions(tokens), offsets(tokens, 0);
      for (int i = 0; i < tokens; ++i) positions[i] = i;
      auto dev = UploadRows(sh, kBlock, table, positions, offsets);
      if (!dev.ok()) return 1;
      const PagedRows& rows = dev->rows;
      CudaPagedAttention attention;
      const RowSpan prompt{0, tokens};
      auto t = TimeOnGpu(
          [&] { return attention.Run(a, (*q)->as<float>(), rows, (*out)->as<float>(), nullptr, {&prompt, 1}); }, 1,
          3);
      if (!t.ok()) {
        std::fprintf(stderr, "attention_bench: %s\n", std::string(t.status().message()).c_str());
        return 1;
      }
      const double flops = 2.0 * a.num_heads * (static_cast<double>(tokens) * (tokens + 1) / 2) *
                           (a.head_dim + a.v_head_dim);
      std::printf("%-12s %8d %10.3f %9.1f\n", sh.name, tokens, *t * 1e3, flops / *t / 1e12);
    }
  }
  return 0;
}

}  // namespace
}  // namespace moemesh

int main() { return moemesh::Main(); }
