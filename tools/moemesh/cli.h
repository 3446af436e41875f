#ifndef MOEMESH_TOOLS_MOEMESH_CLI_H_
#define MOEMESH_TOOLS_MOEMESH_CLI_H_

#include <istream>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/engine/engine.h"
#include "tools/moemesh/commands.h"
#include "tools/moemesh/progress.h"

namespace moemesh {

// Parses "1,2,3" (spaces allowed). INVALID_ARGUMENT names the bad item.
absl::StatusOr<std::vector<int>> ParseTokenIds(const std::string& text);

// Expert workers for a command that runs the rest of the model in this
// process, as a router does.
struct ExpertWorkers {
  // "a|b,c" = shard 0 on replicas a and b, shard 1 on c; empty runs the
  // experts in this process.
  std::string addresses;
  int connect_timeout_ms = 10000;
  std::string rows = "auto";    // the rows' dtype on the wire, as moemesh-router --expert-rows
  std::string answers = "f32";  // the answers', as moemesh-router --expert-answers
};

struct GenerateCommand {
  std::string model_dir;
  ExpertWorkers experts;
  std::vector<int> prompt_ids;
  std::string prompt;          // text; used when prompt_ids is empty
  std::string tokenizer_path;  // default: the model directory's tokenizer.json
  GenerateParams params;
  EngineOptions engine;
  bool json = false;
  ProgressOutput progress;  // where loading the weights is reported
};

struct ScoreCommand {
  std::string model_dir;
  std::vector<int> prompt_ids;
  std::string logits_out;  // safetensors file
  EngineOptions engine;
  ProgressOutput progress;
};

// Perplexity over a JSON-lines dataset, one sequence per line as
// {"ids": [...]} or {"text": "..."} (tokenized with the model's tokenizer
// as a prompt is, special tokens added); each sequence is scored on its own.
struct EvalCommand {
  std::string model_dir;
  std::string dataset;
  ExpertWorkers experts;  // so that a mesh's expert hop can be measured too
  EngineOptions engine;
  ProgressOutput progress;
};

// tokenize: {"text": ...} lines in, {"ids": [...]} lines out; detokenize:
// the reverse. Every input line is answered; a bad line fails the command
// with its line number.
struct TokenizeCommand {
  std::string tokenizer_path;
  bool add_special_tokens = false;
  bool skip_special_tokens = false;
};

// Run a command, printing its result to `out`. A command that loads a
// model checks its request against config.json first, so that bad input
// fails before the weights load.
absl::Status RunGenerate(const GenerateCommand& cmd, std::ostream& out);
absl::Status RunScore(const ScoreCommand& cmd, std::ostream& out);
absl::Status RunTokenize(const TokenizeCommand& cmd, std::istream& in, std::ostream& out);
absl::Status RunDetokenize(const TokenizeCommand& cmd, std::istream& in, std::ostream& out);
// Prints {"perplexity": p, "nll_sum": s, "predicted_tokens": n, "sequences": k}.
absl::Status RunEval(const EvalCommand& cmd, std::ostream& out);

// The whole CLI: parses argv (flags may use dashes), runs the command,
// prints results on stdout, progress (loading weights) and a one-line
// error on stderr. `moemesh [help] COMMAND --help` prints the command's
// flags, `moemesh --help` the commands, `moemesh --version` the version
// (all on stdout, exit 0). Returns the process exit code: 0 on success, 2
// for bad input (a flag the command does not take, an unknown command, no
// command), 1 otherwise.
int CliMain(int argc, char** argv);

// The commands CliMain knows, each with the flags it takes.
const std::vector<Command>& CliCommands();

}  // namespace moemesh

#endif  // MOEMESH_TOOLS_MOEMESH_CLI_H_
