#ifndef MOEMESH_TOOLS_MOEMESH_COMMANDS_H_
#define MOEMESH_TOOLS_MOEMESH_COMMANDS_H_

// The moemesh CLI's commands and their flags: which command takes which
// Abseil flag, the help that lists them, and an argv parser that refuses a
// flag its command does not take. The flags themselves stay ordinary
// ABSL_FLAGs (one process-wide namespace); a command table only says which
// of them a command accepts.

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace moemesh {

// A flag a command accepts, by its Abseil name (underscores). `help`, when
// set, replaces the flag's own help text in this command's --help.
struct FlagUse {
  const char* name;
  const char* help = nullptr;
};

// Flags listed together under a title in a command's --help.
struct FlagGroup {
  std::string title;  // "flags", "sampling", ...
  std::vector<FlagUse> flags;
};

struct Command {
  std::string name;     // "generate", or "client generate" for a subcommand
  std::string summary;  // one line, for the command list
  std::string usage;    // "moemesh generate --model DIR ..."
  std::string details;  // optional paragraph under the usage line
  std::vector<FlagGroup> groups;

  bool Accepts(const std::string& flag_name) const;
};

// argv split into words and flags. Flags may be written --name=value,
// --name value (not for bools), --name or --noname (bools), with one or two
// dashes, and with dashes or underscores in the name; words after "--" are
// positional.
struct CommandLine {
  struct Flag {
    std::string name;  // with underscores, as Abseil names it
    std::string value;
  };
  std::vector<std::string> words;  // the positional arguments
  std::vector<Flag> flags;
  bool help = false;     // --help, -h, --helpfull, --helpshort
  bool version = false;  // --version
  absl::Status error;    // a flag without its value; help still works
};

// Splits argv[1..] (argv[0] is the program). A non-bool flag takes the next
// word as its value when it has no "=value"; whether a flag is a bool is
// read from the registered Abseil flag of that name.
CommandLine SplitCommandLine(const std::vector<std::string>& args);

// The command that `words` name: the longest match of one or two words
// ("client generate"); `*used` receives the number of words it took. Null
// when none matches.
const Command* FindCommand(absl::Span<const Command> commands, const std::vector<std::string>& words, size_t* used);

// True when some command's name starts with "`word` " ("client").
bool IsCommandGroup(absl::Span<const Command> commands, const std::string& word);

// Sets the flags on the registered Abseil flags. INVALID_ARGUMENT, naming
// the flag and the command, for a flag the command does not accept (and
// the commands of `commands` that do), an unknown flag, or a value that
// does not parse.
absl::Status ApplyFlags(absl::Span<const Command> commands, const Command& command,
                        const std::vector<CommandLine::Flag>& flags);

// The command list: "usage: moemesh COMMAND [flags]", then one line per
// command whose name starts with `group` ("" for all, "client" for its
// subcommands), then `footer`.
std::string CommandListText(absl::Span<const Command> commands, const std::string& group, const std::string& footer);

// A command's --help: usage, details, then each group of flags with its
// help text and default value ("--max-new-tokens   tokens to generate
// (default: 16)"). Flags are written with dashes.
std::string CommandHelpText(const Command& command);

// "max_new_tokens" -> "--max-new-tokens".
std::string FlagDisplayName(const std::string& name);

}  // namespace moemesh

#endif  // MOEMESH_TOOLS_MOEMESH_COMMANDS_H_
