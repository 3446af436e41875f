#include "tools/moemesh/random_model_command.h"

#include <filesystem>
#include <memory>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "core/common/file_util.h"
#include "core/common/status_macros.h"
#include "core/model/random_checkpoint.h"
#include "core/tokenizer/tokenizer.h"

namespace moemesh {
namespace {

// The files a model directory's tokenizer is made of, where present.
constexpr const char* kTokenizerFiles[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                           "chat_template.jinja", "generation_config.json"};

}  // namespace

absl::Status RunRandomModel(const RandomModelCommand& cmd, std::ostream& out) {
  if (cmd.out_dir.empty()) return absl::InvalidArgumentError("--out DIR is required");
  if (cmd.layers < 1) return absl::InvalidArgumentError("--layers must be at least 1");
  const bool deepseek = cmd.preset == "deepseek-v3";
  if (cmd.preset != "mixtral-8x7b" && cmd.preset != "qwen3-30b-a3b" && !deepseek) {
    return absl::InvalidArgumentError("--preset must be mixtral-8x7b, qwen3-30b-a3b or deepseek-v3; got \"" +
                                      cmd.preset + "\"");
  }
  RandomMoeShape moe = cmd.preset == "mixtral-8x7b" ? MixtralShape(cmd.layers) : Qwen3MoeShape(cmd.layers);
  RandomMlaShape mla = DeepSeekV3Shape(cmd.layers);
  if (deepseek && cmd.layers <= mla.dense_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("--layers: DeepSeek-V3's first ", mla.dense_layers, " layer is dense; ask for more"));
  }
  if (!cmd.tokenizer_dir.empty()) {
    MM_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, LoadTokenizer(cmd.tokenizer_dir));
    moe.vocab = mla.vocab = tokenizer->vocab_size();
  }
  MM_ASSIGN_OR_RETURN(const bool wrote,
                      deepseek ? WriteRandomCheckpoint(mla, cmd.out_dir) : WriteRandomCheckpoint(moe, cmd.out_dir));
  int copied = 0;
  if (!cmd.tokenizer_dir.empty()) {
    for (const char* name : kTokenizerFiles) {
      const std::string from = JoinPath(cmd.tokenizer_dir, name);
      if (!std::filesystem::exists(from)) continue;
      std::error_code ec;
      std::filesystem::copy_file(from, JoinPath(cmd.out_dir, name),
                                 std::filesystem::copy_options::overwrite_existing, ec);
      if (ec) return absl::InternalError(absl::StrCat("copying ", from, ": ", ec.message()));
      ++copied;
    }
  }
  out << (wrote ? "wrote " : "kept ") << cmd.preset << " with " << cmd.layers << " layers, vocabulary of "
      << (deepseek ? mla.vocab : moe.vocab) << ", in " << cmd.out_dir;
  if (copied > 0) out << " (and " << copied << " tokenizer files)";
  out << "\n";
  return absl::OkStatus();
}

}  // namespace moemesh
