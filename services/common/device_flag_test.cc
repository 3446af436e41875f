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

}  // namespace
}  // namespace moemesh
