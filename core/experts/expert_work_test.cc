// The grouping by expert and the ordered combine that every expert path
// shares (in process, on a GPU, over the mesh), and the in-process executor
// built on them.
#include "core/experts/expert_work.h"

#include <random>
#include <vector>

#include "core/experts/cpu_expert_device.h"
#include "core/experts/expert_executor.h"
#include "core/experts/local_expert_executor.h"
#include "core/model/config.h"
#include "core/model/safetensors.h"
#include "core/model/weights.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

ExpertBatch Batch(int tokens, int slots, const std::vector<int>& ids, const std::vector<float>& weights, int h = 2,
                  const float* x = nullptr) {
  ExpertBatch b;
  b.layer = 1;
  b.num_tokens = tokens;
  b.hidden_size = h;
  b.hidden_states = x;
  b.slots = slots;
  b.expert_ids = ids.data();
  b.weights = weights.data();
  return b;
}

TEST(GroupByExpertTest, GroupsInIncreasingExpertOrderRowsInTokenOrder) {
  // Token 0 -> experts 3, 1; token 1 -> 1, (unused); token 2 -> 0, 3.
  const std::vector<int> ids = {3, 1, 1, -1, 0, 3};
  const std::vector<float> w = {0.5f, 0.25f, 1.0f, 9.0f, 0.75f, 0.125f};
  ExpertWork work;
  ASSERT_TRUE(GroupByExpert(Batch(3, 2, ids, w), 4, &work).ok());
  ASSERT_EQ(work.groups.size(), 3u);
  EXPECT_EQ(work.groups[0].expert, 0);
  EXPECT_EQ(work.groups[0].rows, (std::vector<int>{2}));
  EXPECT_EQ(work.groups[0].weights, (std::vector<float>{0.75f}));
  EXPECT_EQ(work.groups[1].expert, 1);
  EXPECT_EQ(work.groups[1].rows, (std::vector<int>{0, 1}));
  EXPECT_EQ(work.groups[1].weights, (std::vector<float>{0.25f, 1.0f}));
  EXPECT_EQ(work.groups[2].expert, 3);
  EXPECT_EQ(work.groups[2].rows, (std::vector<int>{0, 2}));
  EXPECT_EQ(work.total_rows(), 5u);
  EXPECT_EQ(work.layer, 1);
  EXPECT_EQ(work.num_rows, 3);
}

TEST(GroupByExpertTest, RefusesBadRouting) {
  ExpertWork work;
  const std::vector<float> w(4, 1.0f);
  absl::Status st = GroupByExpert(Batch(2, 2, {0, 4, 1, 2}, w), 4, &work);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("expert 4"), std::string::npos) << st;
  EXPECT_EQ(GroupByExpert(Batch(2, 2, {0, -2, 1, 2}, w), 4, &work).code(), absl::StatusCode::kInvalidArgument);
  st = GroupByExpert(Batch(2, 2, {0, 1, 2, 2}, w), 4, &work);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("twice"), std::string::npos) << st;
}

// Float addition is not associative: the combine must add a token's rows in
// increasing expert order, whatever order the gate listed them in.
TEST(CombineExpertRowsTest, AddsInIncreasingExpertOrder) {
  const std::vector<int> ids = {2, 0, 1, 0, 1, 2};  // token 0: 2, 0, 1; token 1: 0, 1, 2
  const std::vector<float> w(6, 1.0f);
  ExpertWork work;
  ASSERT_TRUE(GroupByExpert(Batch(2, 3, ids, w, 1), 3, &work).ok());
  // Group rows: expert 0 -> tokens 0, 1; expert 1 -> 0, 1; expert 2 -> 0, 1.
  const std::vector<float> rows = {1e8f, 1e8f, 1.0f, 1.0f, -1e8f, -1e8f};
  std::vector<float> out(2, -7.0f);
  CombineExpertRows(work, rows.data(), 2, out.data());
  const float want = (1e8f + 1.0f) + -1e8f;  // 0 in fp32, where (1e8 - 1e8) + 1 is 1
  EXPECT_EQ(out, (std::vector<float>{want, want}));
  // The table a device combines by lists the same rows in the same order.
  std::vector<int> offsets, order;
  CombineTable(work, 2, &offsets, &order);
  EXPECT_EQ(offsets, (std::vector<int>{0, 3, 6}));
  EXPECT_EQ(order, (std::vector<int>{0, 2, 4, 1, 3, 5}));
}

TEST(CombineExpertRowsTest, TokensWithoutRowsGetZeros) {
  const std::vector<int> ids = {-1, 1, -1};
  const std::vector<float> w(3, 1.0f);
  ExpertWork work;
  ASSERT_TRUE(GroupByExpert(Batch(3, 1, ids, w), 2, &work).ok());
  const std::vector<float> rows = {4.0f, 5.0f};
  std::vector<float> out(6, 3.0f);
  CombineExpertRows(work, rows.data(), 3, out.data());
  EXPECT_EQ(out, (std::vector<float>{0, 0, 4, 5, 0, 0}));
}

// The executor equals computing each expert's rows and adding them per token
// in increasing expert order; it says which expert it lacks.
TEST(LocalExpertExecutorTest, GroupDeviceCombine) {
  const std::string dir = "tests/fixtures/mixtral";
  auto config = LoadModelConfig(dir);
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(config.ok() && ckpt.ok());
  WeightLoadOptions load;
  load.load_dense = false;
  auto w = LoadWeights(std::move(*ckpt), *config, load);
  ASSERT_TRUE(w.ok()) << w.status();
  const int h = config->hidden_size, tokens = 5, slots = config->num_experts_per_tok;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> x(static_cast<size_t>(tokens) * h);
  for (float& v : x) v = normal(rng);
  std::vector<int> ids;
  std::vector<float> weights;
  for (int t = 0; t < tokens; ++t) {
    for (int j = 0; j < slots; ++j) {
      ids.push_back((t * 3 + j * 5) % config->num_experts);
      weights.push_back(0.1f * static_cast<float>(1 + j + t));
    }
  }
  const int layer = 0;
  ExpertBatch b = Batch(tokens, slots, ids, weights, h, x.data());
  b.layer = layer;
  std::vector<float> want(x.size(), 0.0f), row(h);
  for (int e = 0; e < config->num_experts; ++e) {
    for (int t = 0; t < tokens; ++t) {
      for (int j = 0; j < slots; ++j) {
        if (ids[t * slots + j] != e) continue;
        ComputeExpertRows(*w->experts.Find(layer, e), x.data(), h, {t}, {weights[t * slots + j]}, row.data(),
                          nullptr);
        for (int d = 0; d < h; ++d) want[static_cast<size_t>(t) * h + d] += row[d];
      }
    }
  }
  LocalExpertExecutor table(&w->experts, nullptr);
  LocalExpertExecutor device(std::make_unique<CpuExpertDevice>(&w->experts, nullptr), config->num_experts);
  EXPECT_EQ(table.cuda_device(), -1);
  for (LocalExpertExecutor* ex : {&table, &device}) {
    std::vector<float> out(x.size(), 5.0f);
    ASSERT_TRUE(ex->Execute(b, out.data()).ok());
    EXPECT_EQ(out, want);  // bitwise
  }
  ExpertWeightsTable empty;
  LocalExpertExecutor none(&empty, nullptr);
  std::vector<float> out(x.size());
  absl::Status st = none.Execute(b, out.data());
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(st.message().find("of layer 0"), std::string::npos) << st;
  // Ids no model has, or beyond the model's count: INVALID_ARGUMENT, not an
  // allocation of that size.
  std::vector<int> bad = ids;
  bad[0] = 1000000000;
  ExpertBatch wild = b;
  wild.expert_ids = bad.data();
  EXPECT_EQ(table.Execute(wild, out.data()).code(), absl::StatusCode::kInvalidArgument);
  bad[0] = config->num_experts;
  EXPECT_EQ(device.Execute(wild, out.data()).code(), absl::StatusCode::kInvalidArgument);
  // Rows of another width.
  ExpertBatch narrow = b;
  narrow.hidden_size = h / 2;
  EXPECT_EQ(device.Execute(narrow, out.data()).code(), absl::StatusCode::kInvalidArgument);
  b.on_device = true;  // a CPU device has no GPU memory to read
  EXPECT_EQ(table.Execute(b, out.data()).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moemesh
