#include "core/common/subprocess.h"

#include "gtest/gtest.h"

namespace moemesh {
namespace {

TEST(SubprocessTest, WaitsForItsLineAndStops) {
  auto p = Subprocess::Start({"/bin/sh", "-c", "echo starting; echo 'listening on 127.0.0.1:99'; exec sleep 60"});
  ASSERT_TRUE(p.ok()) << p.status();
  auto addr = (*p)->WaitForLine("listening on ", absl::Seconds(10));
  ASSERT_TRUE(addr.ok()) << addr.status();
  EXPECT_EQ(*addr, "127.0.0.1:99");
  EXPECT_EQ((*p)->lines(), (std::vector<std::string>{"starting", "listening on 127.0.0.1:99"}));
  (*p)->ForwardOutput(-1);
  EXPECT_EQ((*p)->Poll(), -1);  // still running
  EXPECT_EQ((*p)->Stop(), 128 + 15);  // SIGTERM
}

TEST(SubprocessTest, ReportsAChildThatDiesFirst) {
  auto p = Subprocess::Start({"/bin/sh", "-c", "echo oops; exit 3"});
  ASSERT_TRUE(p.ok());
  auto addr = (*p)->WaitForLine("listening on ", absl::Seconds(10));
  EXPECT_EQ(addr.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(addr.status().message().find("status 3"), std::string::npos) << addr.status();
}

TEST(SubprocessTest, TimesOutAndKillsAChildThatIgnoresTerm) {
  auto p = Subprocess::Start({"/bin/sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"});
  ASSERT_TRUE(p.ok());
  auto addr = (*p)->WaitForLine("listening on ", absl::Milliseconds(100));
  EXPECT_EQ(addr.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ((*p)->Stop(absl::Milliseconds(200)), 128 + 9);  // SIGKILL after the grace
}

TEST(SubprocessTest, MissingProgram) {
  EXPECT_EQ(Subprocess::Start({"/nonexistent/program"}).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace moemesh
