// The roofline the GPU benchmarks print must agree with the one the issues'
// targets are set against (the project's shared roofline script): its bytes
// per decode step for the 8-layer Mixtral-8x7B and Qwen3-30B-A3B shapes and
// the 3-layer DeepSeek-V3 shape.
#include "bench/roofline.h"

#include "gtest/gtest.h"

namespace moemesh {
namespace {

TEST(RooflineTest, AgreesWithTheSharedScript) {
  const RooflineShape mixtral{8, 4096, 32, 8, 128, 8, 2, 14336, 32000};
  const RooflineShape qwen3{8, 2048, 32, 4, 128, 128, 8, 768, 151936};
  // GB per step at 1, 8 and 64 streams, as the script prints them.
  EXPECT_NEAR(DecodeStepBytes(mixtral, 1, kRooflineContext) / 1e9, 6.584, 5e-4);
  EXPECT_NEAR(DecodeStepBytes(mixtral, 8, kRooflineContext) / 1e9, 21.326, 5e-4);
  EXPECT_NEAR(DecodeStepBytes(mixtral, 64, kRooflineContext) / 1e9, 24.289, 5e-4);
  EXPECT_NEAR(DecodeStepBytes(qwen3, 1, kRooflineContext) / 1e9, 1.543, 5e-4);
  EXPECT_NEAR(DecodeStepBytes(qwen3, 32, kRooflineContext) / 1e9, 9.573, 5e-4);
  EXPECT_NEAR(DecodeStepBytes(qwen3, 64, kRooflineContext) / 1e9, 10.844, 5e-4);
  // DeepSeek-V3's shape, 3 layers (one dense).
  const MlaRooflineShape deepseek = DeepSeekV3Roofline(3);
  EXPECT_NEAR(DecodeStepBytes(deepseek, 1, kRooflineContext) / 1e9, 5.698, 5e-4);
  EXPECT_NEAR(DecodeStepBytes(deepseek, 8, kRooflineContext) / 1e9, 14.413, 5e-4);
  EXPECT_NEAR(DecodeStepBytes(deepseek, 32, kRooflineContext) / 1e9, 33.099, 5e-4);
  EXPECT_NEAR(DecodeStepBytes(deepseek, 64, kRooflineContext) / 1e9, 43.558, 5e-4);
}

}  // namespace
}  // namespace moemesh
