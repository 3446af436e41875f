// The routed-expert layer on the GPU (ExpertFfnCuda) at Mixtral shape
// (hidden 4096, FFN 14336, 8 experts, top-2) and DeepSeek-V3 shape (hidden
// 7168, expert FFN 2048, 256 experts, top-8), for 1 to 8192 tokens:
// achieved TB/s and TFLOP/s against the ceilings measured in the same run
// (device-to-device copy bandwidth; a large bf16 cuBLAS GEMM). Tokens are
// spread evenly over the experts. Run on the GPU machine (tools/gpu/run.sh
// bench).
#include <cstdio>
#include <memory>
#include <vector>

#include "core/kernels/cuda/ceilings.h"
#include "core/kernels/cuda/cuda_runtime_util.h"
#include "core/kernels/cuda/expert_ffn.h"

namespace moemesh {
namespace {

struct Shape {
  const char* name;
  int hidden, inter, experts, top_k;
};

int Main() {
  if (CudaDeviceCount() == 0) {
    std::fprintf(stderr, "expert_ffn_bench: no CUDA device\n");
    return 1;
  }
  auto bw = MeasureCopyBandwidth(size_t{4} << 30);
  auto flops = MeasureBf16GemmFlops(8192, 8192, 8192);
  if (!bw.ok() || !flops.ok()) {
    std::fprintf(stderr, "expert_ffn_bench: ceilings failed\n");
    return 1;
  }
  std::printf("ceilings: copy %.2f TB/s, bf16 GEMM %.0f TFLOP/s\n", *bw / 1e12, *flops / 1e12);
  std::printf("%-12s %6s %10s %8s %9s %7s %7s\n", "shape", "tokens", "ms", "TB/s", "TFLOP/s", "%BW", "%GEMM");
  for (const Shape& sh : {Shape{"mixtral", 4096, 14336, 8, 2}, Shape{"deepseek-v3", 7168, 2048, 256, 8}}) {
    const size_t per_matrix = static_cast<size_t>(sh.hidden) * sh.inter;
    std::vector<std::unique_ptr<DeviceBuffer>> weights;
    for (int e = 0; e < sh.experts; ++e) {
      for (int m = 0; m < 3; ++m) {
        auto b = DeviceBuffer::Allocate(per_matrix * 2);
        if (!b.ok() || !FillRandomBf16((*b)->data(), per_matrix, e * 3 + m + 7).ok()) return 1;
        weights.push_back(std::move(*b));
      }
    }
    for (int tokens : {1, 8, 64, 512, 4096, 8192}) {
      const int rows = tokens * sh.top_k;
      // Row r goes to expert r % experts: an even spread.
      std::vector<ExpertFfnGroup> groups;
      int offset = 0, active = 0;
      for (int e = 0; e < sh.experts; ++e) {
        const int n = rows / sh.experts + (e < rows % sh.experts ? 1 : 0);
        groups.push_back({weights[3 * e]->as<uint16_t>(), weights[3 * e + 1]->as<uint16_t>(),
                          weights[3 * e + 2]->as<uint16_t>(), offset, n});
        offset += n;
        active += n > 0;
      }
      auto x = DeviceBuffer::Allocate(static_cast<size_t>(rows) * sh.hidden * 4);
      auto w = DeviceBuffer::Allocate(static_cast<size_t>(rows) * 4);
      auto act = DeviceBuffer::Allocate(static_cast<size_t>(rows) * sh.inter * 4);
      auto out = DeviceBuffer::Allocate(static_cast<size_t>(rows) * sh.hidden * 4);
      if (!x.ok() || !w.ok() || !act.ok() || !out.ok()) return 1;
      if (!FillRandomF32((*x)->as<float>(), static_cast<size_t>(rows) * sh.hidden, 1).ok()) return 1;
      if (!FillRandomF32((*w)->as<float>(), rows, 2).ok()) return 1;
      auto t = TimeOnGpu(
          [&] {
            return ExpertFfnCuda((*x)->as<float>(), (*w)->as<float>(), groups, sh.hidden, sh.inter,
                                 (*act)->as<float>(), (*out)->as<float>(), nullptr);
          },
          2, tokens >= 4096 ? 3 : 10);
      if (!t.ok()) {
        std::fprintf(stderr, "expert_ffn_bench: %s\n", std::string(t.status().message()).c_str());
        return 1;
      }
      // The fewest bytes: each active expert's weights once, the rows in
      // and out (fp32), the activations written and read once.
      const double bytes = active * 3.0 * per_matrix * 2 + rows * (2.0 * sh.hidden + 2.0 * sh.inter) * 4;
      const double fl = 2.0 * rows * 3.0 * per_matrix;
      std::printf("%-12s %6d %10.3f %8.2f %9.1f %6.1f%% %6.1f%%\n", sh.name, tokens, *t * 1e3, bytes / *t / 1e12,
                  fl / *t / 1e12, 100 * bytes / *t / *bw, 100 * fl / *t / *flops);
    }
  }
  return 0;
}

}  // namespace
}  // namespace moemesh

int main() { return moemesh::Main(); }
