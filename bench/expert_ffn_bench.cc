// The routed-expert layer on the GPU (ExpertFfnCuda) at Mixtral shape
// (hidden 4096, FFN 14336, 8 experts, top-2) and DeepSeek-V3 shape (hidden
// 7168, expert FFN 2048, 256 experts, top-8), for 1 to 8192 tokens:
// achieved TB/s and TFLOP/s against the ceilings measured in the same run
// (device-to-device copy bandwidth; a large bf16 cuBLAS GEMM). Tokens are
// spread evenly over the experts. Besides the default (each group's path
// chosen by its size; timed as PyTorch is) it times each path alone (the
// decode kernel, cuBLAS, the grouped GEMM) in turn, which is how the
// default's crossovers were chosen.
// bench/expert_ffn_torch.py reads this output and prints PyTorch's times
// beside it. Run on the GPU machine (tools/gpu/run.sh bench).
#include <cstdio>
#include <functional>
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
  // The ceilings in the state the layer is timed in (sustained), and the
  // GEMM's burst rate beside it (first: a cool GPU's).
  auto burst = MeasureBf16GemmFlops(8192, 8192, 8192);
  auto bw = MeasureCopyBandwidth(size_t{4} << 30, kSustainedWarmUpSeconds);
  auto flops = MeasureBf16GemmFlops(8192, 8192, 8192, kSustainedWarmUpSeconds);
  if (!bw.ok() || !flops.ok() || !burst.ok()) {
    std::fprintf(stderr, "expert_ffn_bench: ceilings failed\n");
    return 1;
  }
  std::printf("ceilings (sustained): copy %.2f TB/s, bf16 GEMM %.0f TFLOP/s (in a burst: %.0f)\n", *bw / 1e12,
              *flops / 1e12, *burst / 1e12);
  std::printf("%-12s %6s %10s %8s %9s %7s %7s %10s %10s %10s\n", "shape", "tokens", "ms", "TB/s", "TFLOP/s", "%BW",
              "%GEMM", "kernel_ms", "cublas_ms", "grouped_ms");
  for (const Shape& sh : {Shape{"mixtral", 4096, 14336, 8, 2}, Shape{"deepseek-v3", 7168, 2048, 256, 8}}) {
    const size_t per_matrix = static_cast<size_t>(sh.hidden) * sh.inter;
    // Per expert: gate and up in one allocation (as the worker holds them), down.
    std::vector<std::unique_ptr<DeviceBuffer>> weights;
    for (int e = 0; e < sh.experts; ++e) {
      for (int m = 0; m < 2; ++m) {
        const size_t n = (m == 0 ? 2 : 1) * per_matrix;
        auto b = DeviceBuffer::Allocate(n * 2);
        if (!b.ok() || !FillRandomBf16((*b)->data(), n, e * 3 + m + 7).ok()) return 1;
        weights.push_back(std::move(*b));
      }
    }
    auto path = [&](int gemm_min_rows, bool grouped) {
      CudaExpertFfn::Options o;
      o.gemm_min_rows = o.grouped_min_rows = gemm_min_rows;
      o.grouped_gemm = grouped;
      o.grouped_max_rows = o.grouped_max_rows_few_groups = 1 << 30;
      return CudaExpertFfn::Create(sh.hidden, sh.inter, o);
    };
    auto automatic = CudaExpertFfn::Create(sh.hidden, sh.inter), kernel = path(1 << 30, false),
         cublas = path(1, false), grouped = path(1, true);
    if (!automatic.ok() || !kernel.ok() || !cublas.ok() || !grouped.ok()) return 1;
    for (int tokens : {1, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192}) {
      const int rows = tokens * sh.top_k;
      // Row r goes to expert r % experts: an even spread.
      std::vector<ExpertFfnGroup> groups;
      int offset = 0, active = 0;
      for (int e = 0; e < sh.experts; ++e) {
        const int n = rows / sh.experts + (e < rows % sh.experts ? 1 : 0);
        const uint16_t* gate = weights[2 * e]->as<uint16_t>();
        groups.push_back({gate, gate + per_matrix, weights[2 * e + 1]->as<uint16_t>(), offset, n});
        offset += n;
        active += n > 0;
      }
      auto x = DeviceBuffer::Allocate(static_cast<size_t>(rows) * sh.hidden * 4);
      auto w = DeviceBuffer::Allocate(static_cast<size_t>(rows) * 4);
      auto out = DeviceBuffer::Allocate(static_cast<size_t>(rows) * sh.hidden * 4);
      if (!x.ok() || !w.ok() || !out.ok()) return 1;
      if (!FillRandomF32((*x)->as<float>(), static_cast<size_t>(rows) * sh.hidden, 1).ok()) return 1;
      if (!FillRandomF32((*w)->as<float>(), rows, 2).ok()) return 1;
      auto run = [&](CudaExpertFfn* f) {
        return [&, f] { return f->Run((*x)->as<float>(), (*w)->as<float>(), groups, (*out)->as<float>(), nullptr); };
      };
      const int iterations = tokens >= 4096 ? 15 : 30;
      // The default alone, run after run in the sustained state, as
      // bench/expert_ffn_torch.py times PyTorch's variants: the speedup
      // compares like with like. Then the single paths in turn, one run
      // each, so that they share the GPU's state: their times decide the
      // crossovers.
      if (absl::Status st = WarmUpGpu(run(automatic->get()), kSustainedWarmUpSeconds); !st.ok()) {
        std::fprintf(stderr, "expert_ffn_bench: %s\n", std::string(st.message()).c_str());
        return 1;
      }
      auto alone = TimeOnGpu(run(automatic->get()), 0, iterations);
      auto t = TimeOnGpuInTurn({run(kernel->get()), run(cublas->get()), run(grouped->get())}, 5, iterations);
      if (!alone.ok() || !t.ok()) {
        const absl::Status& st = alone.ok() ? t.status() : alone.status();
        std::fprintf(stderr, "expert_ffn_bench: %s\n", std::string(st.message()).c_str());
        return 1;
      }
      const double ms[4] = {*alone * 1e3, (*t)[0] * 1e3, (*t)[1] * 1e3, (*t)[2] * 1e3};
      const double secs = ms[0] / 1e3;
      // The fewest bytes: each active expert's weights once, the rows in
      // and out (fp32), the activations (bf16) written and read once.
      const double bytes = active * 3.0 * per_matrix * 2 + rows * (8.0 * sh.hidden + 4.0 * sh.inter);
      const double fl = 2.0 * rows * 3.0 * per_matrix;
      std::printf("%-12s %6d %10.3f %8.2f %9.1f %6.1f%% %6.1f%% %10.3f %10.3f %10.3f\n", sh.name, tokens, ms[0],
                  bytes / secs / 1e12, fl / secs / 1e12, 100 * bytes / secs / *bw, 100 * fl / secs / *flops, ms[1],
                  ms[2], ms[3]);
    }
  }
  return 0;
}

}  // namespace
}  // namespace moemesh

int main() { return moemesh::Main(); }
