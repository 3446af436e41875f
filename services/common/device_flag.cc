#include "services/common/device_flag.h"

#include <sys/stat.h>

#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace moemesh {

absl::StatusOr<int> ParseDeviceFlag(const std::string& value) {
  if (value == "cpu") return -1;
  if (value == "cuda") return 0;
  int index = 0;
  if (value.rfind("cuda:", 0) == 0 && absl::SimpleAtoi(value.substr(5), &index) && index >= 0) return index;
  return absl::InvalidArgumentError(absl::StrCat("--device ", value, ": expected cpu, cuda or cuda:N"));
}

bool MpsDaemonRunning() {
  const char* dir = std::getenv("CUDA_MPS_PIPE_DIRECTORY");
  const std::string control = std::string(dir != nullptr && *dir != '\0' ? dir : "/tmp/nvidia-mps") + "/control";
  struct stat st;
  return stat(control.c_str(), &st) == 0;
}

}  // namespace moemesh
