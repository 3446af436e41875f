#ifndef MOEMESH_SERVICES_COMMON_DEVICE_FLAG_H_
#define MOEMESH_SERVICES_COMMON_DEVICE_FLAG_H_

#include <string>

#include "absl/status/statusor.h"

namespace moemesh {

// A service's --device value: "cpu" is -1; "cuda" is GPU 0 and "cuda:N" GPU
// N. INVALID_ARGUMENT, quoting the value, for anything else.
absl::StatusOr<int> ParseDeviceFlag(const std::string& value);

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_COMMON_DEVICE_FLAG_H_
