// The statistics of `moemesh bench serve`: percentiles as numpy's linear
// ones, TTFT / ITL / TPOT from recorded response times, throughput over the
// load point's time, errors counted by status and left out of the times.
#include "tools/moemesh/bench_stats.h"

#include "gtest/gtest.h"

namespace moemesh {
namespace {

TEST(BenchStatsTest, PercentilesAreLinearBetweenRanks) {
  const std::vector<double> v = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  EXPECT_DOUBLE_EQ(Percentile(v, 50), 5.5);  // numpy.percentile(range(1, 11), 50)
  EXPECT_DOUBLE_EQ(Percentile(v, 90), 9.1);
  EXPECT_DOUBLE_EQ(Percentile(v, 99), 9.91);
  EXPECT_DOUBLE_EQ(Percentile(v, 0), 1);
  EXPECT_DOUBLE_EQ(Percentile(v, 100), 10);
  EXPECT_DOUBLE_EQ(Percentile({7}, 99), 7);
  Distribution d = Summarize(std::vector<double>{3, 1, 2});
  EXPECT_DOUBLE_EQ(d.mean, 2);
  EXPECT_DOUBLE_EQ(d.p50, 2);
  EXPECT_DOUBLE_EQ(d.max, 3);
  EXPECT_EQ(d.count, 3u);
  EXPECT_EQ(Summarize(std::vector<double>{}).count, 0u);
}

TEST(BenchStatsTest, LatenciesComeFromTheResponseTimes) {
  RequestRecord r;
  r.chunk_times = {0.100, 0.130, 0.170};
  r.chunk_tokens = {1, 2, 1};
  r.end = 0.175;
  EXPECT_EQ(r.output_tokens(), 4);
  EXPECT_DOUBLE_EQ(r.ttft(), 0.100);
  ASSERT_EQ(r.itls().size(), 2u);
  EXPECT_NEAR(r.itls()[0], 0.030, 1e-12);
  EXPECT_NEAR(r.itls()[1], 0.040, 1e-12);
  EXPECT_NEAR(r.tpot(), (0.175 - 0.100) / 3, 1e-12);
  RequestRecord one;
  one.chunk_times = {0.2};
  one.chunk_tokens = {1};
  one.end = 0.2;
  EXPECT_EQ(one.tpot(), 0);  // no token after the first
}

TEST(BenchStatsTest, ASummaryCountsTokensThroughputAndErrors) {
  std::vector<RequestRecord> records(4);
  for (int i = 0; i < 3; ++i) {
    records[i].prompt_tokens = 10;
    records[i].chunk_times = {0.1 * (i + 1), 0.1 * (i + 1) + 0.05};
    records[i].chunk_tokens = {1, 1};
    records[i].end = 0.1 * (i + 1) + 0.05;
  }
  records[3].code = 8;  // RESOURCE_EXHAUSTED: counted, not timed
  records[3].end = 0.001;
  BenchSummary s = Summarize("concurrency 2", records, 2.0);
  EXPECT_EQ(s.requests, 4u);
  EXPECT_EQ(s.completed, 3u);
  ASSERT_EQ(s.errors.size(), 1u);
  EXPECT_EQ(s.errors.at("RESOURCE_EXHAUSTED"), 1u);
  EXPECT_EQ(s.prompt_tokens, 30);
  EXPECT_EQ(s.output_tokens, 6);
  EXPECT_DOUBLE_EQ(s.output_tokens_per_s, 3);
  EXPECT_DOUBLE_EQ(s.requests_per_s, 1.5);
  EXPECT_EQ(s.ttft.count, 3u);
  EXPECT_NEAR(s.ttft.p50, 0.2, 1e-12);
  EXPECT_NEAR(s.itl.mean, 0.05, 1e-12);
  EXPECT_NEAR(s.e2e.max, 0.35, 1e-12);
  EXPECT_LE(s.e2e.p50, s.e2e.p90);
  EXPECT_LE(s.e2e.p90, s.e2e.p99);
  nlohmann::json j = ToJson(s);
  EXPECT_EQ(j["completed"], 3);
  EXPECT_EQ(j["errors"]["RESOURCE_EXHAUSTED"], 1);
  EXPECT_NEAR(j["ttft_ms"]["p50"].get<double>(), 200, 1e-9);
  const std::string table = ToTable(s);
  EXPECT_NE(table.find("1 RESOURCE_EXHAUSTED"), std::string::npos) << table;
  EXPECT_NE(table.find("TTFT"), std::string::npos);
}

TEST(BenchStatsTest, StatusNames) {
  EXPECT_EQ(StatusName(0), "OK");
  EXPECT_EQ(StatusName(14), "UNAVAILABLE");
  EXPECT_EQ(StatusName(16), "UNAUTHENTICATED");
  EXPECT_EQ(StatusName(99), "CODE_99");
}

}  // namespace
}  // namespace moemesh
