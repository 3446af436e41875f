#include "services/gateway/api_keys.h"

#include <string>

#include "absl/strings/match.h"
#include "core/common/file_util.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

absl::Time g_now = absl::UnixEpoch();
absl::Time FakeNow() { return g_now; }

std::unique_ptr<ApiKeys> Keys() {
  std::vector<ApiKeys::Key> keys(3);
  keys[0] = {"team-a", "sk-a", 2, 0, {}};
  keys[1] = {"team-b", "sk-b", 0, 600, {}};  // 10 tokens a second
  keys[2] = {"team-c", "sk-c", 0, 0, {"other-model"}};
  auto k = ApiKeys::FromKeys(std::move(keys));
  EXPECT_TRUE(k.ok()) << k.status();
  return std::move(*k);
}

TEST(ApiKeysTest, KnownBearerKeysOnly) {
  auto keys = Keys();
  EXPECT_TRUE(keys->Admit("Bearer sk-a", "m").ok());
  EXPECT_TRUE(keys->Admit("bearer  sk-a ", "m").ok());
  for (const char* bad : {"", "sk-a", "Basic sk-a", "Bearer sk-x", "Bearer "}) {
    EXPECT_EQ(keys->Admit(bad, "m").status().code(), absl::StatusCode::kUnauthenticated) << bad;
  }
  EXPECT_TRUE(absl::StrContains(keys->Admit("", "m").status().message(), "authorization: Bearer KEY"));
}

TEST(ApiKeysTest, ModelsAKeyMayUse) {
  auto keys = Keys();
  EXPECT_EQ(keys->Admit("Bearer sk-c", "m").status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(keys->Admit("Bearer sk-c", "other-model").ok());
}

TEST(ApiKeysTest, StreamsAtOnceUntilLeasesEnd) {
  auto keys = Keys();
  auto a = keys->Admit("Bearer sk-a", "m"), b = keys->Admit("Bearer sk-a", "m");
  ASSERT_TRUE(a.ok() && b.ok());
  const absl::Status third = keys->Admit("Bearer sk-a", "m").status();
  EXPECT_EQ(third.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(third.message(), "2 streams")) << third;
  a->reset();
  EXPECT_TRUE(keys->Admit("Bearer sk-a", "m").ok());
  EXPECT_TRUE(keys->Admit("Bearer sk-b", "m").ok()) << "another key's streams are its own";
}

TEST(ApiKeysTest, TokensPerMinuteRefillContinuously) {
  auto keys = Keys();
  keys->set_clock(&FakeNow);
  g_now = absl::UnixEpoch() + absl::Hours(1);
  auto lease = keys->Admit("Bearer sk-b", "m");
  ASSERT_TRUE(lease.ok());
  (*lease)->Charge(650);  // 50 past the minute's 600
  const absl::Status st = keys->Admit("Bearer sk-b", "m").status();
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(st.message(), "retry in 6 s")) << st;
  g_now += absl::Seconds(4);  // 40 back: still 10 short
  EXPECT_FALSE(keys->Admit("Bearer sk-b", "m").ok());
  g_now += absl::Seconds(2);
  EXPECT_TRUE(keys->Admit("Bearer sk-b", "m").ok());
}

TEST(ApiKeysTest, LoadsAFileAndNamesWhatIsWrong) {
  const std::string path = ::testing::TempDir() + "/api_keys.json";
  ASSERT_TRUE(WriteFileAtomically(path, R"({"keys": [{"name": "a", "key": "sk-1", "max_streams": 4,
      "tokens_per_minute": 1000, "models": ["m"]}, {"key": "sk-2"}]})").ok());
  auto keys = ApiKeys::Load(path);
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_TRUE((*keys)->Admit("Bearer sk-2", "anything").ok());
  EXPECT_EQ((*keys)->Admit("Bearer sk-1", "n").status().code(), absl::StatusCode::kPermissionDenied);
  for (const char* bad : {R"([])", R"({"keys": [{"name": "x"}]})", R"({"keys": [{"key": "k"}, {"key": "k"}]})",
                          R"({"keys": [{"key": "k", "max_streams": "2"}]})",
                          R"({"keys": [{"key": "k", "tokens_per_minute": -1}]})", R"({"keys": [{"key": ""}]})"}) {
    ASSERT_TRUE(WriteFileAtomically(path, bad).ok());
    EXPECT_EQ(ApiKeys::Load(path).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

// A reload takes added, changed and removed keys; a key still there keeps
// its running streams, and a removed key's calls in progress finish.
TEST(ApiKeysTest, ReloadTakesTheFileAsItIsNow) {
  const std::string path = ::testing::TempDir() + "/api_keys_reload.json";
  ASSERT_TRUE(WriteFileAtomically(path, R"({"keys": [{"key": "sk-1", "max_streams": 1}, {"key": "sk-2"}]})").ok());
  auto keys = ApiKeys::Load(path);
  ASSERT_TRUE(keys.ok()) << keys.status();
  auto held = (*keys)->Admit("Bearer sk-1", "m");
  auto gone = (*keys)->Admit("Bearer sk-2", "m");
  ASSERT_TRUE(held.ok() && gone.ok());
  ASSERT_TRUE(WriteFileAtomically(path, R"({"keys": [{"key": "sk-1", "max_streams": 2}, {"key": "sk-3"}]})").ok());
  ASSERT_TRUE((*keys)->Reload(path).ok());
  EXPECT_EQ((*keys)->Admit("Bearer sk-2", "m").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE((*keys)->Admit("Bearer sk-3", "m").ok());
  auto second = (*keys)->Admit("Bearer sk-1", "m");  // the new limit: 2, one of them still held
  EXPECT_TRUE(second.ok());
  EXPECT_EQ((*keys)->Admit("Bearer sk-1", "m").status().code(), absl::StatusCode::kResourceExhausted);
  gone->reset();  // a removed key's lease ends safely
  ASSERT_TRUE(WriteFileAtomically(path, "{broken").ok());
  EXPECT_FALSE((*keys)->Reload(path).ok());
  EXPECT_TRUE((*keys)->Admit("Bearer sk-3", "m").ok()) << "a failed reload keeps the keys";
}

}  // namespace
}  // namespace moemesh
