#ifndef MOEMESH_SERVICES_COMMON_DEVICE_FLAG_H_
#define MOEMESH_SERVICES_COMMON_DEVICE_FLAG_H_

#include <string>

#include "absl/status/statusor.h"

namespace moemesh {

// A service's --device value: "cpu" is -1; "cuda" is GPU 0 and "cuda:N" GPU
// N. INVALID_ARGUMENT, quoting the value, for anything else.
absl::StatusOr<int> ParseDeviceFlag(const std::string& value);

// Whether a CUDA MPS control daemon serves this environment's clients: its
// pipe directory ($CUDA_MPS_PIPE_DIRECTORY, else /tmp/nvidia-mps) holds
// its `control` pipe. Processes that share a GPU without it take turns on
// it (docs/OPERATIONS.md, "cuda-ipc").
bool MpsDaemonRunning();

// The CPU-only flags (--quantize, --bf16-inputs) on a process whose
// --device is `device` (GPU `gpu`, -1 for the CPU): INVALID_ARGUMENT "--quantize
// SPEC with --device cuda: ..." naming each that is set, OK otherwise.
absl::Status CheckCpuOnlyFlags(const std::string& device, int gpu, const std::string& quantize, bool quantized,
                               bool bf16_inputs);

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_COMMON_DEVICE_FLAG_H_
