#ifndef MOEMESH_CORE_METRICS_GPU_COLLECTOR_H_
#define MOEMESH_CORE_METRICS_GPU_COLLECTOR_H_

#include <memory>
#include <vector>

#include "prometheus/collectable.h"

namespace moemesh {

// GPU metrics for the GPUs a service uses, read through NVML at scrape
// time: moemesh_gpu_memory_used_bytes, moemesh_gpu_memory_total_bytes and
// moemesh_gpu_utilization_ratio (0 to 1, the share of the last sample
// period in which a kernel ran), labelled gpu="N". NVML comes with the
// NVIDIA driver and is loaded at run time (libnvidia-ml.so.1), so nothing
// here needs CUDA to build; without it, Create returns null.
class GpuCollector : public prometheus::Collectable {
 public:
  // `gpus` are NVML device indices. Null when NVML cannot be loaded or
  // initialised (no driver, no GPU).
  static std::shared_ptr<GpuCollector> Create(std::vector<int> gpus);
  ~GpuCollector() override;

  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  struct Nvml;
  GpuCollector() = default;
  std::unique_ptr<Nvml> nvml_;
  std::vector<int> gpus_;
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_METRICS_GPU_COLLECTOR_H_
