// The dense layers' products at decode row counts (1 to 8 rows) on the GPU:
// CudaGemm's own kernel (a warp per output column, one launch) beside
// cuBLAS (x rounded to bf16, then the product, then at times a split-k
// reduction), at the shapes of Qwen3-30B-A3B, Mixtral-8x7B and
// DeepSeek-V3 (attention projections, the router's fp32 gate, the LM head).
// Each figure is 20 calls back to back, as a decode step issues them; the
// bandwidth counts the weight bytes once, beside the copy bandwidth
// measured in the same run. Run on the GPU machine (tools/gpu/run.sh bench).
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "core/kernels/cuda/ceilings.h"
#include "core/kernels/cuda/cuda_runtime_util.h"
#include "core/kernels/cuda/gemm.h"

namespace moemesh {
namespace {

struct Shape {
  const char* name;
  int m, k;   // weight [m, k]
  bool bf16;  // else fp32 (the router's gate)
};

constexpr int kCallsPerRun = 20;

int Fail(const absl::Status& st) {
  std::fprintf(stderr, "linear_bench: %s\n", std::string(st.message()).c_str());
  return 1;
}

int Main() {
  if (CudaDeviceCount() == 0) {
    std::fprintf(stderr, "linear_bench: no CUDA device\n");
    return 1;
  }
  auto bw = MeasureCopyBandwidth(size_t{4} << 30);
  if (!bw.ok()) return Fail(bw.status());
  auto ours = CudaGemm::Create(CudaGemm::kSkinnyMaxRows);
  auto cublas = CudaGemm::Create(0);
  if (!ours.ok()) return Fail(ours.status());
  if (!cublas.ok()) return Fail(cublas.status());
  const std::vector<Shape> shapes = {
      {"qwen3 q", 4096, 2048, true},       {"qwen3 k/v", 512, 2048, true},   {"qwen3 o", 2048, 4096, true},
      {"qwen3 router", 128, 2048, false},  {"qwen3 head", 151936, 2048, true}, {"mixtral q/o", 4096, 4096, true},
      {"mixtral k/v", 1024, 4096, true},   {"mixtral head", 32000, 4096, true}, {"deepseek q_a", 1536, 7168, true},
      {"deepseek q_b", 24576, 1536, true}, {"deepseek kv_a", 576, 7168, true}, {"deepseek o", 7168, 16384, true},
      {"deepseek router", 256, 7168, false},
  };
  std::printf("copy bandwidth %.2f TB/s; %d calls back to back per figure\n", *bw / 1e12, kCallsPerRun);
  std::printf("%-16s %7s %6s %5s %10s %10s %8s %8s\n", "product", "m", "k", "rows", "ours us", "cuBLAS us", "x cuBLAS",
              "of copy");
  for (const Shape& s : shapes) {
    const size_t weight_bytes = static_cast<size_t>(s.m) * s.k * (s.bf16 ? 2 : 4);
    auto w = DeviceBuffer::Allocate(weight_bytes);
    auto x = DeviceBuffer::Allocate(static_cast<size_t>(CudaGemm::kSkinnyMaxRows) * s.k * sizeof(float));
    auto out = DeviceBuffer::Allocate(static_cast<size_t>(CudaGemm::kSkinnyMaxRows) * s.m * sizeof(float));
    if (!w.ok()) return Fail(w.status());
    if (!x.ok()) return Fail(x.status());
    if (!out.ok()) return Fail(out.status());
    absl::Status st = s.bf16 ? FillRandomBf16((*w)->data(), weight_bytes / 2, 1)
                             : FillRandomF32((*w)->as<float>(), weight_bytes / 4, 1);
    if (st.ok()) st = FillRandomF32((*x)->as<float>(), static_cast<size_t>(CudaGemm::kSkinnyMaxRows) * s.k, 2);
    if (!st.ok()) return Fail(st);
    for (int rows : {1, 2, 4, 8}) {
      auto run = [&](CudaGemm* g) {
        return [&, g]() -> absl::Status {
          for (int i = 0; i < kCallsPerRun; ++i) {
            absl::Status r = s.bf16 ? g->LinearBf16((*x)->as<float>(), rows, (*w)->as<uint16_t>(), s.m, s.k,
                                                    (*out)->as<float>(), nullptr)
                                    : g->LinearF32((*x)->as<float>(), rows, (*w)->as<float>(), s.m, s.k,
                                                   (*out)->as<float>(), nullptr);
            if (!r.ok()) return r;
          }
          return absl::OkStatus();
        };
      };
      auto t = TimeOnGpuInTurn({run(ours->get()), run(cublas->get())}, 3, 15);
      if (!t.ok()) return Fail(t.status());
      const double ours_s = (*t)[0] / kCallsPerRun, cublas_s = (*t)[1] / kCallsPerRun;
      std::printf("%-16s %7d %6d %5d %10.2f %10.2f %7.2fx %7.0f%%\n", s.name, s.m, s.k, rows, ours_s * 1e6,
                  cublas_s * 1e6, cublas_s / ours_s, 100.0 * weight_bytes / ours_s / *bw);
    }
  }
  return 0;
}

}  // namespace
}  // namespace moemesh

int main() { return moemesh::Main(); }
