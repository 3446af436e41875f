#ifndef MOEMESH_TOOLS_MOEMESH_RANDOM_MODEL_COMMAND_H_
#define MOEMESH_TOOLS_MOEMESH_RANDOM_MODEL_COMMAND_H_

#include <ostream>
#include <string>

#include "absl/status/status.h"

namespace moemesh {

// `moemesh random-model`: a random-weight checkpoint at a real model's layer
// shapes (core/model/random_checkpoint.h) with `layers` layers, for
// benchmarks on machines without the real weights. With `tokenizer_dir`,
// that model's tokenizer files are copied in and the checkpoint's
// vocabulary takes the tokenizer's size (its LM head and embeddings then
// differ from the real model's), so that the mesh can serve it end to end.
struct RandomModelCommand {
  std::string preset;  // mixtral-8x7b, qwen3-30b-a3b or deepseek-v3
  int layers = 8;
  std::string out_dir;
  std::string tokenizer_dir;  // optional
};

absl::Status RunRandomModel(const RandomModelCommand& cmd, std::ostream& out);

}  // namespace moemesh

#endif  // MOEMESH_TOOLS_MOEMESH_RANDOM_MODEL_COMMAND_H_
