#include "core/experts/placement.h"

#include "gtest/gtest.h"

namespace moemesh {
namespace {

TEST(PlacementTest, ModuloByDefault) {
  ShardPlacement p(3);
  EXPECT_EQ(p.ShardOf(0, 7), 1);
  EXPECT_EQ(p.ExpertsOf(2, 5, 8), (std::vector<int>{2, 5}));
}

TEST(PlacementTest, FileWithPerLayerOverrides) {
  auto p = ShardPlacement::Parse(R"({"shards": [[0, 1, 2], [3, 4, 5, 6, 7]],
                                     "layers": {"2": [[0, 2, 4, 6], [1, 3, 5, 7]]}})",
                                 "p.json", 4, 8);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->num_shards(), 2);
  EXPECT_EQ(p->ExpertsOf(0, 0, 8), (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(p->ExpertsOf(1, 3, 8), (std::vector<int>{3, 4, 5, 6, 7}));
  EXPECT_EQ(p->ExpertsOf(0, 2, 8), (std::vector<int>{0, 2, 4, 6}));
  EXPECT_TRUE(p->Holds(1, 2, 7));
}

TEST(PlacementTest, BadFilesNameTheProblem) {
  struct Case {
    const char* json;
    const char* says;
  };
  for (const Case& c : {
           Case{"[]", "not a JSON object"},
           Case{R"({"shards": []})", "\"shards\" must list"},
           Case{R"({"shards": [[0, 1, 2, 3], [3, 4, 5, 6, 7]]})", "expert 3 is on shards 0 and 1"},
           Case{R"({"shards": [[0, 1, 2], [3, 4, 5, 6]]})", "expert 7 of layer 0 is on no shard"},
           Case{R"({"shards": [[0, 1, 2, 9], [3, 4, 5, 6, 7]]})", "not an expert id in [0, 8)"},
           Case{R"({"shards": [[0, 1, 2, 3], [4, 5, 6, 7]], "layers": {"9": [[0], [1]]}})", "not a layer index"},
           Case{R"({"shards": [[0, 1, 2, 3], [4, 5, 6, 7]], "layers": {"1": [[0, 1, 2, 3, 4, 5, 6, 7]]}})",
                "expected a list of 2 shards"},
       }) {
    auto p = ShardPlacement::Parse(c.json, "p.json", 4, 8);
    ASSERT_FALSE(p.ok()) << c.json;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(p.status().message().find(c.says), std::string::npos) << p.status();
  }
  EXPECT_EQ(ShardPlacement::Load("/nonexistent.json", 4, 8).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace moemesh
