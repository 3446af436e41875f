#include "core/metrics/gpu_collector.h"

#include <dlfcn.h>

#include <string>

#include "prometheus/metric_family.h"

namespace moemesh {
namespace {

// The few NVML types and calls used, as the driver's libnvidia-ml.so.1
// exports them (NVML's stable C ABI; nvml.h is not installed here).
using NvmlReturn = int;  // NVML_SUCCESS == 0
struct NvmlDeviceSt;
using NvmlDevice = NvmlDeviceSt*;
struct NvmlMemory {
  unsigned long long total, free, used;
};
struct NvmlUtilization {
  unsigned int gpu, memory;  // percent
};

}  // namespace

struct GpuCollector::Nvml {
  void* lib = nullptr;
  NvmlReturn (*init)() = nullptr;
  NvmlReturn (*shutdown)() = nullptr;
  NvmlReturn (*handle)(unsigned int, NvmlDevice*) = nullptr;
  NvmlReturn (*memory)(NvmlDevice, NvmlMemory*) = nullptr;
  NvmlReturn (*utilization)(NvmlDevice, NvmlUtilization*) = nullptr;
  ~Nvml() {
    if (shutdown) shutdown();
    if (lib) dlclose(lib);
  }
};

std::shared_ptr<GpuCollector> GpuCollector::Create(std::vector<int> gpus) {
  auto n = std::make_unique<Nvml>();
  n->lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (n->lib == nullptr) return nullptr;
  n->init = reinterpret_cast<NvmlReturn (*)()>(dlsym(n->lib, "nvmlInit_v2"));
  n->handle = reinterpret_cast<NvmlReturn (*)(unsigned int, NvmlDevice*)>(
      dlsym(n->lib, "nvmlDeviceGetHandleByIndex_v2"));
  n->memory = reinterpret_cast<NvmlReturn (*)(NvmlDevice, NvmlMemory*)>(dlsym(n->lib, "nvmlDeviceGetMemoryInfo"));
  n->utilization = reinterpret_cast<NvmlReturn (*)(NvmlDevice, NvmlUtilization*)>(
      dlsym(n->lib, "nvmlDeviceGetUtilizationRates"));
  auto shutdown = reinterpret_cast<NvmlReturn (*)()>(dlsym(n->lib, "nvmlShutdown"));
  if (!n->init || !n->handle || !n->memory || !n->utilization || !shutdown || n->init() != 0) return nullptr;
  n->shutdown = shutdown;
  std::shared_ptr<GpuCollector> c(new GpuCollector);
  c->nvml_ = std::move(n);
  c->gpus_ = std::move(gpus);
  return c;
}

GpuCollector::~GpuCollector() = default;

std::vector<prometheus::MetricFamily> GpuCollector::Collect() const {
  prometheus::MetricFamily used{"moemesh_gpu_memory_used_bytes", "GPU memory in use (all processes).",
                                prometheus::MetricType::Gauge, {}};
  prometheus::MetricFamily total{"moemesh_gpu_memory_total_bytes", "GPU memory in all.",
                                 prometheus::MetricType::Gauge, {}};
  prometheus::MetricFamily util{"moemesh_gpu_utilization_ratio",
                                "Share of the last sample period in which a kernel ran on the GPU, 0 to 1.",
                                prometheus::MetricType::Gauge, {}};
  for (int g : gpus_) {
    NvmlDevice dev = nullptr;
    if (nvml_->handle(static_cast<unsigned int>(g), &dev) != 0) continue;
    prometheus::ClientMetric m;
    m.label = {{"gpu", std::to_string(g)}};
    NvmlMemory mem{};
    if (nvml_->memory(dev, &mem) == 0) {
      m.gauge.value = static_cast<double>(mem.used);
      used.metric.push_back(m);
      m.gauge.value = static_cast<double>(mem.total);
      total.metric.push_back(m);
    }
    NvmlUtilization u{};
    if (nvml_->utilization(dev, &u) == 0) {
      m.gauge.value = u.gpu / 100.0;
      util.metric.push_back(m);
    }
  }
  return {used, total, util};
}

}  // namespace moemesh
