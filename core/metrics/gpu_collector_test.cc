// GPU metrics through NVML. Labelled `gpu`: on a machine without the
// NVIDIA driver it only checks that nothing breaks.
#include "core/metrics/gpu_collector.h"

#include "gtest/gtest.h"
#include "prometheus/metric_family.h"

namespace moemesh {
namespace {

TEST(GpuCollectorTest, ReportsMemoryAndUtilisationOfEachGpu) {
  auto c = GpuCollector::Create({0});
  if (c == nullptr) GTEST_SKIP() << "no NVML (no NVIDIA driver)";
  std::vector<prometheus::MetricFamily> families = c->Collect();
  ASSERT_EQ(families.size(), 3u);
  for (const auto& f : families) {
    ASSERT_EQ(f.metric.size(), 1u) << f.name;
    EXPECT_EQ(f.metric[0].label[0].value, "0");
  }
  EXPECT_GT(families[1].metric[0].gauge.value, 1e9) << "total memory";
  EXPECT_LE(families[0].metric[0].gauge.value, families[1].metric[0].gauge.value);
  EXPECT_GE(families[2].metric[0].gauge.value, 0.0);
  EXPECT_LE(families[2].metric[0].gauge.value, 1.0);
}

}  // namespace
}  // namespace moemesh
