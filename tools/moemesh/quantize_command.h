#ifndef MOEMESH_TOOLS_MOEMESH_QUANTIZE_COMMAND_H_
#define MOEMESH_TOOLS_MOEMESH_QUANTIZE_COMMAND_H_

#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "core/quant/quantize.h"
#include "tools/moemesh/progress.h"

namespace moemesh {

// `moemesh quantize`: a checkpoint's linear layers quantized to int4 and
// written as a GPTQ or AWQ checkpoint, or to FP8 e4m3 in blocks of 128 x
// 128 with a scale each as DeepSeek-V3's checkpoints are (config.json's
// quantization_config says which): formats moemesh reads back (and vLLM
// and transformers read). The routed experts' projections, or with `all_layers` every
// projection of the decoder layers (attention, dense and shared FFNs); the
// router, embeddings, norms and LM head stay as stored. Each weight file
// becomes one of the same name; the others in the model directory are
// copied.
struct QuantizeCommand {
  std::string model_dir;
  std::string out_dir;  // must not exist, or be empty
  QuantSpec spec;       // int4 for gptq and awq (int8 has no such format); none for fp8
  // gptq (v1 symmetric, v2 asymmetric: v1 cannot store a zero point of 0),
  // awq, or fp8.
  std::string format = "gptq";
  bool all_layers = false;
  ProgressOutput progress;
};

absl::Status RunQuantize(const QuantizeCommand& cmd, std::ostream& out);

}  // namespace moemesh

#endif  // MOEMESH_TOOLS_MOEMESH_QUANTIZE_COMMAND_H_
