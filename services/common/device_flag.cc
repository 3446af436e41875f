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

absl::Status CheckCpuOnlyFlags(const std::string& device, int gpu, const std::string& quantize, bool quantized,
                               bool bf16_inputs) {
  if (gpu < 0) return absl::OkStatus();
  if (quantized) {
    return absl::InvalidArgumentError(
        absl::StrCat("--quantize ", quantize, " with --device ", device, ": quantized experts run on the CPU for now"));
  }
  if (bf16_inputs) {
    return absl::InvalidArgumentError(
        absl::StrCat("--bf16-inputs with --device ", device, ": the GPU's products take bf16 inputs already"));
  }
  return absl::OkStatus();
}

}  // namespace moemesh
