#include "services/expert/expert_worker.h"

#include "core/experts/local_expert_executor.h"
#include "core/model/safetensors.h"
#include "gtest/gtest.h"
#include "services/expert/expert_service.h"

namespace moemesh {
namespace {

ExpertWorker::Options Shard(int index, int count) {
  ExpertWorker::Options o;
  o.model_dir = "tests/fixtures/qwen2_moe";  // layer 1 is dense
  o.shard_index = index;
  o.num_shards = count;
  return o;
}

TEST(ExpertWorkerTest, LoadsOnlyItsShard) {
  auto w = ExpertWorker::Create(Shard(1, 3));
  ASSERT_TRUE(w.ok()) << w.status();
  auto held = (*w)->HeldExperts();
  ASSERT_EQ(held.size(), 2u);  // layers 0 and 2
  EXPECT_EQ(held[0].first, 0);
  EXPECT_EQ(held[0].second, (std::vector<int>{1, 4, 7}));
  EXPECT_EQ(held[1].first, 2);
}

TEST(ExpertWorkerTest, BadOptions) {
  EXPECT_EQ(ExpertWorker::Create(Shard(3, 3)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ExpertWorker::Create(Shard(0, 9)).status().code(), absl::StatusCode::kInvalidArgument);
  auto o = Shard(0, 1);
  o.model_dir = "/nonexistent";
  EXPECT_EQ(ExpertWorker::Create(o).status().code(), absl::StatusCode::kNotFound);
}

TEST(ExpertWorkerTest, MatchesLocalExecutorRowByRow) {
  auto w = ExpertWorker::Create(Shard(0, 2));
  ASSERT_TRUE(w.ok());
  std::vector<float> hidden(3 * 64);
  for (size_t i = 0; i < hidden.size(); ++i) hidden[i] = 0.01f * static_cast<float>((i * 37) % 101) - 0.5f;
  ExpertWork work{0, 3, 64, hidden.data(), {{2, {0, 2}, {0.25f, 1.5f}}, {4, {1}, {0.75f}}}};
  std::vector<float> out;
  ASSERT_TRUE((*w)->Run(work, &out).ok());
  ASSERT_EQ(out.size(), 3u * 64);
  // Reference: the single-process executor with one expert per token.
  auto config = LoadModelConfig("tests/fixtures/qwen2_moe");
  auto ckpt = Checkpoint::Open("tests/fixtures/qwen2_moe");
  auto weights = LoadWeights(std::move(*ckpt), *config);
  ASSERT_TRUE(weights.ok());
  LocalExpertExecutor local(&weights->experts, nullptr);
  int ids[3] = {2, 4, 2};
  float wts[3] = {0.25f, 0.75f, 1.5f};
  std::vector<float> ref(3 * 64);
  ASSERT_TRUE(local.Execute({0, 3, 64, hidden.data(), 1, ids, wts}, ref.data()).ok());
  // Outputs come in request order: expert 2 rows 0, 2, then expert 4 row 1.
  for (int d = 0; d < 64; ++d) {
    EXPECT_EQ(out[d], ref[d]);
    EXPECT_EQ(out[64 + d], ref[2 * 64 + d]);
    EXPECT_EQ(out[128 + d], ref[64 + d]);
  }
}

TEST(ExpertWorkerTest, BadWorkGetsClearErrors) {
  auto w = ExpertWorker::Create(Shard(0, 2));
  ASSERT_TRUE(w.ok());
  std::vector<float> hidden(2 * 64, 0.1f), out;
  auto run = [&](ExpertWork work) { return (*w)->Run(work, &out); };
  auto st = run({1, 2, 64, hidden.data(), {{0, {0}, {1.0f}}}});  // dense layer
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("layer 1"), std::string::npos);
  st = run({0, 2, 64, hidden.data(), {{1, {0}, {1.0f}}}});  // expert 1 is on shard 1
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(run({0, 2, 64, hidden.data(), {{0, {2}, {1.0f}}}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run({0, 2, 64, hidden.data(), {{0, {0, 1}, {1.0f}}}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run({0, 2, 32, hidden.data(), {{0, {0}, {1.0f}}}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run({0, 2, 64, hidden.data(), {{99, {0}, {1.0f}}}}).code(), absl::StatusCode::kInvalidArgument);
  st = run({0, 2, 64, hidden.data(), {{0, {0}, {1.0f}}, {0, {1}, {1.0f}}}});  // expert 0 twice
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("two groups"), std::string::npos) << st;
}

TEST(ExpertServiceTest, MalformedTensorIsAnsweredInTheResponse) {
  auto w = ExpertWorker::Create(Shard(0, 1));
  ASSERT_TRUE(w.ok());
  ExpertServiceImpl service(w->get());
  v1::DispatchRequest req;
  req.set_step(7);
  req.set_layer(0);
  req.mutable_hidden_states()->set_dtype(v1::DTYPE_F32);
  req.mutable_hidden_states()->add_shape(2);
  req.mutable_hidden_states()->add_shape(64);
  req.mutable_hidden_states()->set_data(std::string(100, '\0'));  // needs 512 bytes
  v1::DispatchResponse resp;
  service.Handle(req, &resp);
  EXPECT_EQ(resp.step(), 7u);
  EXPECT_EQ(resp.error_code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(resp.error_message().find("hidden_states"), std::string::npos);
  EXPECT_FALSE(resp.has_outputs());
}

}  // namespace
}  // namespace moemesh
