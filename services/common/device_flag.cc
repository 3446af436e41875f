#include "services/common/device_flag.h"

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

}  // namespace moemesh
