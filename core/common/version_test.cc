#include "core/common/version.h"

#include <regex>
#include <string>

#include "gtest/gtest.h"

namespace moemesh {
namespace {

TEST(VersionTest, NamesVersionCommitAndBuild) {
  const std::string v = VersionString();
  EXPECT_TRUE(std::regex_match(
      v,
      std::regex(R"(moemesh \d+\.\d+\.\d+ \(commit ([0-9a-f]{12}|unknown), (not )?optimised, assertions (on|off)\))")))
      << v;
  EXPECT_NE(v.find(kVersion), std::string::npos);
  EXPECT_NE(v.find(BuildCommit()), std::string::npos);
}

TEST(VersionTest, BuildTypeFollowsTheCompilerFlags) {
  // This test is compiled with the same flags as version.cc.
#ifdef __OPTIMIZE__
  EXPECT_EQ(BuildType().rfind("optimised, ", 0), 0u) << BuildType();
#else
  EXPECT_EQ(BuildType().rfind("not optimised, ", 0), 0u) << BuildType();
#endif
#ifdef NDEBUG
  EXPECT_NE(BuildType().find("assertions off"), std::string::npos) << BuildType();
#else
  EXPECT_NE(BuildType().find("assertions on"), std::string::npos) << BuildType();
#endif
}

}  // namespace
}  // namespace moemesh
