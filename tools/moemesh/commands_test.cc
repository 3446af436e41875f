#include "tools/moemesh/commands.h"

#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

// Flags of a made-up CLI; the names are this test's own.
ABSL_FLAG(int, cmdtest_count, 3, "how many");
ABSL_FLAG(bool, cmdtest_loud, false, "shout");
ABSL_FLAG(std::string, cmdtest_name, "", "a name");
ABSL_FLAG(double, cmdtest_ratio, 0.5,
          "a ratio with a long help text that has to wrap onto a second line because it does not fit in eighty "
          "columns");

namespace moemesh {
namespace {

const std::vector<Command>& TestCommands() {
  static const std::vector<Command> commands = {
      {"run",
       "runs things",
       "moemesh run [flags]",
       "Runs.",
       {{"flags", {{"cmdtest_count"}, {"cmdtest_loud"}}}, {"tuning", {{"cmdtest_ratio"}}}}},
      {"pkg add",
       "adds a package",
       "moemesh pkg add --cmdtest-name NAME",
       "",
       {{"flags", {{"cmdtest_name", "the package"}}}}},
      {"pkg list", "lists packages", "moemesh pkg list", "", {}},
  };
  return commands;
}

TEST(CommandsTest, SplitsWordsFlagsAndValues) {
  const CommandLine cl = SplitCommandLine(
      {"run", "--cmdtest-count", "7", "--cmdtest_loud", "-cmdtest-name=x y", "extra", "--", "--cmdtest-count"});
  EXPECT_EQ(cl.words, (std::vector<std::string>{"run", "extra", "--cmdtest-count"}));
  ASSERT_EQ(cl.flags.size(), 3u);
  EXPECT_EQ(cl.flags[0].name, "cmdtest_count");
  EXPECT_EQ(cl.flags[0].value, "7");
  EXPECT_EQ(cl.flags[1].name, "cmdtest_loud");  // a bool takes no next word
  EXPECT_EQ(cl.flags[1].value, "true");
  EXPECT_EQ(cl.flags[2].value, "x y");
  EXPECT_TRUE(cl.error.ok());
  EXPECT_FALSE(cl.help);
  EXPECT_FALSE(cl.version);
}

TEST(CommandsTest, HelpVersionNegatedBoolsAndMissingValues) {
  EXPECT_TRUE(SplitCommandLine({"run", "--help"}).help);
  EXPECT_TRUE(SplitCommandLine({"-h"}).help);
  EXPECT_TRUE(SplitCommandLine({"--version"}).version);
  const CommandLine no = SplitCommandLine({"--nocmdtest-loud"});
  ASSERT_EQ(no.flags.size(), 1u);
  EXPECT_EQ(no.flags[0].name, "cmdtest_loud");
  EXPECT_EQ(no.flags[0].value, "false");
  const CommandLine missing = SplitCommandLine({"run", "--cmdtest-count"});
  EXPECT_EQ(missing.error.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(missing.error.message(), "--cmdtest-count needs a value")) << missing.error;
}

TEST(CommandsTest, FindsCommandsAndGroups) {
  size_t used = 0;
  const Command* c = FindCommand(TestCommands(), {"pkg", "add", "x"}, &used);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->name, "pkg add");
  EXPECT_EQ(used, 2u);
  c = FindCommand(TestCommands(), {"run", "add"}, &used);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->name, "run");
  EXPECT_EQ(used, 1u);
  EXPECT_EQ(FindCommand(TestCommands(), {"pkg"}, &used), nullptr);
  EXPECT_EQ(FindCommand(TestCommands(), {"nope"}, &used), nullptr);
  EXPECT_TRUE(IsCommandGroup(TestCommands(), "pkg"));
  EXPECT_FALSE(IsCommandGroup(TestCommands(), "run"));
  EXPECT_FALSE(IsCommandGroup(TestCommands(), "pk"));
}

TEST(CommandsTest, AppliesOnlyTheCommandsFlags) {
  absl::FlagSaver saver;
  const Command& run = TestCommands()[0];
  ASSERT_TRUE(ApplyFlags(TestCommands(), run, {{"cmdtest_count", "9"}, {"cmdtest_ratio", "0.25"}}).ok());
  EXPECT_EQ(absl::GetFlag(FLAGS_cmdtest_count), 9);
  EXPECT_EQ(absl::GetFlag(FLAGS_cmdtest_ratio), 0.25);

  absl::Status other = ApplyFlags(TestCommands(), run, {{"cmdtest_name", "x"}});
  EXPECT_EQ(other.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(other.message(), "--cmdtest-name is not a flag of `moemesh run`")) << other;
  EXPECT_TRUE(absl::StrContains(other.message(), "`moemesh pkg add`")) << other;  // whose it is
  EXPECT_EQ(absl::GetFlag(FLAGS_cmdtest_name), "");

  absl::Status unknown = ApplyFlags(TestCommands(), run, {{"cmdtest_nothing", ""}});
  EXPECT_TRUE(absl::StrContains(unknown.message(), "unknown flag --cmdtest-nothing for `moemesh run`")) << unknown;

  absl::Status bad = ApplyFlags(TestCommands(), run, {{"cmdtest_count", "many"}});
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(bad.message(), "--cmdtest-count: bad value \"many\" (expected an integer)")) << bad;
}

TEST(CommandsTest, HelpListsTheFlagsWithDefaults) {
  const std::string help = CommandHelpText(TestCommands()[0]);
  EXPECT_EQ(help.rfind("usage: moemesh run [flags]\n\nRuns.\n\nflags:\n", 0), 0u) << help;
  EXPECT_TRUE(absl::StrContains(help, "  --cmdtest-count  how many (default: 3)\n")) << help;
  EXPECT_TRUE(absl::StrContains(help, "  --cmdtest-loud   shout (default: false)\n")) << help;
  EXPECT_TRUE(absl::StrContains(help, "\ntuning:\n  --cmdtest-ratio  a ratio")) << help;
  EXPECT_TRUE(absl::StrContains(help, "\n" + std::string(19, ' '))) << help;  // wrapped under its column
  EXPECT_TRUE(absl::StrContains(help, "(default: 0.5)")) << help;
  EXPECT_FALSE(absl::StrContains(help, "cmdtest-name")) << help;
  for (absl::string_view line : absl::StrSplit(help, '\n')) EXPECT_LE(line.size(), 80u) << line;
  // A command's own help text wins; an empty default is left out.
  const std::string add = CommandHelpText(TestCommands()[1]);
  EXPECT_TRUE(absl::StrContains(add, "  --cmdtest-name  the package\n")) << add;
  EXPECT_TRUE(absl::StrContains(CommandHelpText(TestCommands()[2]), "takes no flags"));
}

TEST(CommandsTest, ListsCommandsOrAGroup) {
  const std::string all = CommandListText(TestCommands(), "", "footer");
  EXPECT_EQ(all,
            "usage: moemesh COMMAND [flags]\n\ncommands:\n"
            "  run       runs things\n"
            "  pkg add   adds a package\n"
            "  pkg list  lists packages\n"
            "\nfooter\n");
  const std::string pkg = CommandListText(TestCommands(), "pkg", "");
  EXPECT_EQ(pkg.rfind("usage: moemesh pkg SUBCOMMAND [flags]\n\nsubcommands:\n", 0), 0u) << pkg;
  EXPECT_FALSE(absl::StrContains(pkg, "run")) << pkg;
}

}  // namespace
}  // namespace moemesh
