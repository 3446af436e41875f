#include "services/gateway/session.h"

#include <vector>

#include "gtest/gtest.h"

namespace moemesh {
namespace {

TEST(SessionTest, AFirstTurnHasNoHistory) {
  absl::StatusOr<SessionTurn> t = ComposeSessionTurn(SessionHistory(), {1, 2, 3}, 4, 100);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->prompt, (std::vector<int>{1, 2, 3}));
  const SessionHistory next = NextHistory(*t, {7, 8});
  EXPECT_EQ(next.tokens, (std::vector<int>{1, 2, 3, 7, 8}));
  EXPECT_EQ(next.turn_starts, (std::vector<int>{0}));
  EXPECT_EQ(next.version, 0);
}

TEST(SessionTest, TheOldestWholeTurnsGoFirstWhenTheWindowIsFull) {
  SessionHistory h;
  h.tokens = {1, 1, 1, 2, 2, 3, 3, 3, 3};  // turns of 3, 2 and 4 tokens
  h.turn_starts = {0, 3, 5};
  h.version = 7;
  // Everything fits: 9 + 2 + 3 <= 14.
  absl::StatusOr<SessionTurn> t = ComposeSessionTurn(h, {9, 9}, 3, 14);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->dropped_tokens, 0);
  EXPECT_EQ(t->prompt.size(), 11u);
  // One token short: the first turn (3 tokens) goes, whole.
  t = ComposeSessionTurn(h, {9, 9}, 3, 13);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->dropped_tokens, 3);
  EXPECT_EQ(t->prompt, (std::vector<int>{2, 2, 3, 3, 3, 3, 9, 9}));
  EXPECT_EQ(t->kept.turn_starts, (std::vector<int>{0, 2}));
  EXPECT_EQ(t->kept.version, 7);
  const SessionHistory next = NextHistory(*t, {5});
  EXPECT_EQ(next.tokens, (std::vector<int>{2, 2, 3, 3, 3, 3, 9, 9, 5}));
  EXPECT_EQ(next.turn_starts, (std::vector<int>{0, 2, 6}));
  // Room for the new turn only: every old turn goes.
  t = ComposeSessionTurn(h, {9, 9}, 3, 5);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->dropped_tokens, 9);
  EXPECT_EQ(t->prompt, (std::vector<int>{9, 9}));
  EXPECT_TRUE(t->kept.turn_starts.empty());
  // A turn that alone exceeds the window.
  EXPECT_EQ(ComposeSessionTurn(h, {9, 9}, 3, 4).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SessionTest, AHistoryWithoutTurnStartsIsOneTurn) {
  SessionHistory h;
  h.tokens = {1, 2, 3, 4};
  absl::StatusOr<SessionTurn> t = ComposeSessionTurn(h, {5}, 1, 6);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->prompt.size(), 5u);
  t = ComposeSessionTurn(h, {5}, 1, 5);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->prompt, (std::vector<int>{5}));
}

}  // namespace
}  // namespace moemesh
