#ifndef MOEMESH_TOOLS_MOEMESH_PROGRESS_H_
#define MOEMESH_TOOLS_MOEMESH_PROGRESS_H_

// Progress of slow steps (loading weights, starting the mesh): on a
// terminal, one status line redrawn in place; elsewhere (a pipe, a log
// file), plain lines only, one per event.

#include <cstdint>
#include <memory>
#include <mutex>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/engine/engine.h"
#include "core/experts/expert_executor.h"

namespace moemesh {

// Where a command reports progress. A null stream reports nothing.
struct ProgressOutput {
  std::ostream* stream = nullptr;
  bool terminal = false;  // `stream` is a terminal: redraw a status line
  int columns = 80;       // the terminal's width; longer status lines are cut
};

// Progress on std::cerr (fd 2) or std::cout (fd 1): a terminal if
// isatty(fd).
ProgressOutput ProgressOn(int fd);

// "812 B", "3.1 MB", "12.4 GB" (powers of 1000).
std::string FormatBytes(uint64_t bytes);

// The weight files of a checkpoint directory, as the engine reads them:
// the shards that model.safetensors.index.json names, else
// model.safetensors.
std::vector<std::string> WeightFiles(const std::string& model_dir);

// Their total size (missing files count 0).
uint64_t WeightFileBytes(const std::string& model_dir);

// How much of them this process has read so far: the resident size of
// its mappings of them (/proc/self/smaps); 0 if unknown.
uint64_t MappedWeightBytes(const std::string& model_dir);

// One status line on a terminal. Set() redraws it; Print() writes a
// permanent line above it; Clear() erases it. Without a terminal, Set()
// and Clear() do nothing and Print() writes plain lines. Thread-safe.
class StatusLine {
 public:
  explicit StatusLine(ProgressOutput out) : out_(out) {}
  ~StatusLine() { Clear(); }

  void Set(const std::string& text);
  void Print(const std::string& line);
  void Clear();

 private:
  std::mutex mu_;
  ProgressOutput out_;
  std::string status_;  // shown on the terminal now
};

// Engine::Create, reporting on `progress`. Without a terminal it writes
// "loading model DIR (N GB of weights)..." before and "loaded in X.Xs"
// after (nothing after a failure). On a terminal a status line shows the
// bytes read so far and the time taken, and ends as "loaded model DIR
// (N GB of weights) in X.Xs".
absl::StatusOr<std::unique_ptr<Engine>> CreateEngineWithProgress(const std::string& model_dir,
                                                                 const EngineOptions& options,
                                                                 std::unique_ptr<ExpertExecutor> experts,
                                                                 const ProgressOutput& progress);

}  // namespace moemesh

#endif  // MOEMESH_TOOLS_MOEMESH_PROGRESS_H_
