#include "tools/moemesh/commands.h"

#include <algorithm>
#include <cstdint>
#include <set>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"

namespace moemesh {
namespace {

constexpr size_t kWidth = 80;     // help text wraps here
constexpr char kGlue[] = "\x01";  // a space that does not break a line

bool IsBoolFlag(const absl::CommandLineFlag* flag) { return flag != nullptr && flag->IsOfType<bool>(); }

// What a flag's value must look like, for errors.
std::string ValueKind(const absl::CommandLineFlag& flag) {
  if (flag.IsOfType<bool>()) return "true or false";
  if (flag.IsOfType<int>() || flag.IsOfType<int64_t>() || flag.IsOfType<uint64_t>()) return "an integer";
  if (flag.IsOfType<float>() || flag.IsOfType<double>()) return "a number";
  return "a value";
}

// `text` word-wrapped into lines of at most `width` characters (a longer
// word gets a line of its own).
std::vector<std::string> Wrap(const std::string& text, size_t width) {
  std::vector<std::string> lines;
  std::string line;
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    if (!line.empty() && line.size() + 1 + word.size() > width) {
      lines.push_back(line);
      line.clear();
    }
    absl::StrAppend(&line, line.empty() ? "" : " ", word);
  }
  if (!line.empty() || lines.empty()) lines.push_back(line);
  return lines;
}

// "  NAME   text", the text wrapped and indented under itself.
void AppendRow(const std::string& name, size_t name_width, const std::string& text, std::string* out) {
  const size_t indent = 2 + name_width + 2;
  std::string row = absl::StrCat("  ", name);
  std::vector<std::string> lines = Wrap(text, kWidth > indent + 20 ? kWidth - indent : 20);
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i == 0 && row.size() + 2 <= indent) {
      row.resize(indent, ' ');
    } else {
      absl::StrAppend(out, row, "\n");
      row = std::string(indent, ' ');
    }
    absl::StrAppend(&row, absl::StrReplaceAll(lines[i], {{kGlue, " "}}));
  }
  absl::StrAppend(out, row, "\n");
}

}  // namespace

bool Command::Accepts(const std::string& flag_name) const {
  for (const FlagGroup& g : groups) {
    for (const FlagUse& f : g.flags) {
      if (flag_name == f.name) return true;
    }
  }
  return false;
}

std::string FlagDisplayName(const std::string& name) {
  return absl::StrCat("--", absl::StrReplaceAll(name, {{"_", "-"}}));
}

CommandLine SplitCommandLine(const std::vector<std::string>& args) {
  CommandLine cl;
  bool positional_only = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (positional_only || a.size() < 2 || a[0] != '-') {
      cl.words.push_back(a);
      continue;
    }
    if (a == "--") {
      positional_only = true;
      continue;
    }
    absl::string_view body = a;
    body.remove_prefix(a[1] == '-' ? 2 : 1);
    const size_t eq = body.find('=');
    const bool has_value = eq != absl::string_view::npos;
    std::string name = absl::StrReplaceAll(body.substr(0, eq), {{"-", "_"}});
    std::string value = has_value ? std::string(body.substr(eq + 1)) : "";
    if (name == "help" || name == "h" || name == "helpfull" || name == "helpshort") {
      cl.help = true;
      continue;
    }
    if (name == "version") {
      cl.version = true;
      continue;
    }
    const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr && !has_value && name.size() > 2 && name.compare(0, 2, "no") == 0 &&
        IsBoolFlag(absl::FindCommandLineFlag(name.substr(2)))) {
      cl.flags.push_back({name.substr(2), "false"});  // --noflag
      continue;
    }
    if (!has_value && IsBoolFlag(flag)) {
      value = "true";
    } else if (!has_value && flag != nullptr) {
      if (i + 1 == args.size()) {
        if (cl.error.ok()) cl.error = absl::InvalidArgumentError(FlagDisplayName(name) + " needs a value");
        continue;
      }
      value = args[++i];
    }
    // An unknown flag takes no value here; ApplyFlags reports it.
    cl.flags.push_back({name, value});
  }
  return cl;
}

const Command* FindCommand(absl::Span<const Command> commands, const std::vector<std::string>& words, size_t* used) {
  for (size_t n : {size_t{2}, size_t{1}}) {
    if (words.size() < n) continue;
    std::vector<std::string> head(words.begin(), words.begin() + static_cast<std::ptrdiff_t>(n));
    const std::string name = absl::StrJoin(head, " ");
    for (const Command& c : commands) {
      if (c.name == name) {
        *used = n;
        return &c;
      }
    }
  }
  return nullptr;
}

bool IsCommandGroup(absl::Span<const Command> commands, const std::string& word) {
  for (const Command& c : commands) {
    if (c.name.size() > word.size() && c.name.compare(0, word.size(), word) == 0 && c.name[word.size()] == ' ') {
      return true;
    }
  }
  return false;
}

absl::Status ApplyFlags(absl::Span<const Command> commands, const Command& command,
                        const std::vector<CommandLine::Flag>& flags) {
  const std::string see = absl::StrCat("`moemesh help ", command.name, "` lists its flags");
  std::set<std::string> seen;
  for (const CommandLine::Flag& f : flags) {
    const std::string shown = FlagDisplayName(f.name);
    // A second value would silently replace the first (lists are one
    // comma-separated value).
    if (!seen.insert(f.name).second) {
      return absl::InvalidArgumentError(absl::StrCat(shown, " is given twice; give it once"));
    }
    if (!command.Accepts(f.name)) {
      std::vector<std::string> owners;
      for (const Command& c : commands) {
        if (c.Accepts(f.name)) owners.push_back(absl::StrCat("`moemesh ", c.name, "`"));
      }
      if (owners.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("unknown flag ", shown, " for `moemesh ", command.name, "`; ", see));
      }
      return absl::InvalidArgumentError(absl::StrCat(shown, " is not a flag of `moemesh ", command.name,
                                                     "` (it is one of ", absl::StrJoin(owners, ", "), "); ", see));
    }
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(f.name);
    if (flag == nullptr) {
      return absl::InternalError(
          absl::StrCat("`moemesh ", command.name, "` lists ", shown, ", but no such flag is defined"));
    }
    std::string error;
    if (!flag->ParseFrom(f.value, &error)) {
      return absl::InvalidArgumentError(
          absl::StrCat(shown, ": bad value \"", f.value, "\" (expected ", ValueKind(*flag), ")"));
    }
  }
  return absl::OkStatus();
}

std::string CommandListText(absl::Span<const Command> commands, const std::string& group, const std::string& footer) {
  std::vector<const Command*> shown;
  for (const Command& c : commands) {
    if (group.empty() || c.name.compare(0, group.size() + 1, group + " ") == 0) shown.push_back(&c);
  }
  size_t width = 0;
  for (const Command* c : shown) width = std::max(width, c->name.size());
  std::string out = group.empty() ? "usage: moemesh COMMAND [flags]\n\ncommands:\n"
                                  : absl::StrCat("usage: moemesh ", group, " SUBCOMMAND [flags]\n\nsubcommands:\n");
  for (const Command* c : shown) AppendRow(c->name, width, c->summary, &out);
  if (!footer.empty()) absl::StrAppend(&out, "\n", footer, "\n");
  return out;
}

std::string CommandHelpText(const Command& command) {
  std::string out = absl::StrCat("usage: ", command.usage, "\n");
  if (!command.details.empty()) {
    absl::StrAppend(&out, "\n");
    for (const std::string& line : Wrap(command.details, kWidth)) absl::StrAppend(&out, line, "\n");
  }
  size_t width = 0;
  for (const FlagGroup& g : command.groups) {
    for (const FlagUse& f : g.flags) width = std::max(width, FlagDisplayName(f.name).size());
  }
  if (width == 0) absl::StrAppend(&out, "\nThis command takes no flags.\n");
  for (const FlagGroup& g : command.groups) {
    if (g.flags.empty()) continue;
    absl::StrAppend(&out, "\n", g.title, ":\n");
    for (const FlagUse& f : g.flags) {
      const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(f.name);
      std::string text = f.help != nullptr ? f.help : flag != nullptr ? flag->Help() : "(not defined)";
      if (flag != nullptr && !flag->DefaultValue().empty()) {
        absl::StrAppend(&text, " (default:", kGlue, absl::StrReplaceAll(flag->DefaultValue(), {{" ", kGlue}}), ")");
      }
      AppendRow(FlagDisplayName(f.name), width, text, &out);
    }
  }
  return out;
}

}  // namespace moemesh
