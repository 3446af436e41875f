#ifndef MOEMESH_CORE_ENGINE_KERNEL_PARAMS_H_
#define MOEMESH_CORE_ENGINE_KERNEL_PARAMS_H_

#include "core/kernels/cpu/gating.h"
#include "core/kernels/cpu/rope.h"
#include "core/model/config.h"

namespace moemesh {

// Kernel parameters from a model's configuration, shared by the CPU and GPU
// forward passes.

// The rotary embedding's.
RopeParams ToRopeParams(const RopeConfig& r);
// The gate's, with `score_bias` (DeepSeek-V3's correction; null if none)
// in the memory the gating kernel reads.
GatingParams ToGatingParams(const ModelConfig& c, const float* score_bias);
// OK when the routing rule can take the model's gate (CheckGatingParams),
// or when no layer is a MoE layer.
absl::Status CheckModelGating(const ModelConfig& c);

}  // namespace moemesh

#endif  // MOEMESH_CORE_ENGINE_KERNEL_PARAMS_H_
