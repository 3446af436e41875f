#include "services/common/device_flag.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace moemesh {
namespace {

TEST(DeviceFlagTest, ParsesCpuCudaAndCudaN) {
  EXPECT_EQ(ParseDeviceFlag("cpu").value(), -1);
  EXPECT_EQ(ParseDeviceFlag("cuda").value(), 0);
  EXPECT_EQ(ParseDeviceFlag("cuda:3").value(), 3);
  for (const char* bad : {"gpu", "cuda:", "cuda:-1", "cuda:x", ""}) {
    absl::StatusOr<int> got = ParseDeviceFlag(bad);
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

// The MPS daemon is found by its control pipe in $CUDA_MPS_PIPE_DIRECTORY.
TEST(DeviceFlagTest, MpsDaemonRunningLooksForItsControlPipe) {
  const std::string dir = ::testing::TempDir() + "/mps_pipe";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  ASSERT_EQ(setenv("CUDA_MPS_PIPE_DIRECTORY", dir.c_str(), 1), 0);
  EXPECT_FALSE(MpsDaemonRunning());
  std::ofstream(dir + "/control").put('\n');
  EXPECT_TRUE(MpsDaemonRunning());
  std::filesystem::remove_all(dir);
  EXPECT_FALSE(MpsDaemonRunning());
  unsetenv("CUDA_MPS_PIPE_DIRECTORY");
}

// The CPU-only flags are refused on a GPU, each named with the device; on
// the CPU, or unset, they pass.
TEST(DeviceFlagTest, CpuOnlyFlagsAreRefusedOnAGpu) {
  EXPECT_TRUE(CheckCpuOnlyFlags("cpu", -1, "int8", true, true).ok());
  EXPECT_TRUE(CheckCpuOnlyFlags("cuda", 0, "none", false, false).ok());
  absl::Status q = CheckCpuOnlyFlags("cuda:1", 1, "int4:64", true, false);
  EXPECT_EQ(q.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(q.message(), "--quantize int4:64 with --device cuda:1: quantized experts run on the CPU for now");
  absl::Status b = CheckCpuOnlyFlags("cuda", 0, "none", false, true);
  EXPECT_EQ(b.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(b.message(), "--bf16-inputs with --device cuda: the GPU's products take bf16 inputs already");
}

}  // namespace
}  // namespace moemesh
