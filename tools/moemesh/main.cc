// moemesh: the command-line tool.
#include "absl/flags/usage.h"
#include "tools/moemesh/cli.h"

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(moemesh::kUsage);
  return moemesh::CliMain(argc, argv);
}
