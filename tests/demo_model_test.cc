// The bundled demo model (models/fortune-moe): moemesh's held-out
// perplexity must equal transformers' (eval/reference.json, computed by
// tools/train/train_demo.py) within 0.5%, and be far below a uniform
// model's; the tokenizer must reproduce the ids the reference was computed on.
#include <cmath>
#include <string>
#include <vector>

#include "core/common/file_util.h"
#include "core/engine/engine.h"
#include "core/engine/perplexity.h"
#include "core/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

const char kModel[] = "models/fortune-moe";

nlohmann::json Reference() {
  auto text = ReadFile(std::string(kModel) + "/eval/reference.json");
  EXPECT_TRUE(text.ok()) << text.status();
  return nlohmann::json::parse(*text);
}

TEST(DemoModelTest, HeldOutPerplexityMatchesTransformers) {
  nlohmann::json ref = Reference();
  EngineOptions opt;
  opt.num_threads = 2;
  auto engine = Engine::Create(kModel, opt);
  ASSERT_TRUE(engine.ok()) << engine.status();
  double nll = 0;
  int64_t count = 0;
  for (const auto& seq : ref["heldout_token_ids"]) {
    std::vector<int> ids = seq.get<std::vector<int>>();
    auto logits = (*engine)->Score(ids);
    ASSERT_TRUE(logits.ok()) << logits.status();
    nll += SequenceNll(logits->data(), (*engine)->config().vocab_size, ids);
    count += static_cast<int64_t>(ids.size()) - 1;
  }
  double ppl = std::exp(nll / count);
  double want = ref["perplexity"].get<double>();
  EXPECT_EQ(count, ref["predicted_tokens"].get<int64_t>());
  EXPECT_NEAR(ppl / want, 1.0, 0.005) << "moemesh " << ppl << " vs transformers " << want;
  EXPECT_LT(ppl, ref["uniform_perplexity"].get<double>() / 20);
}

TEST(DemoModelTest, TokenizerReproducesTheHeldOutIds) {
  nlohmann::json ref = Reference();
  auto tok = LoadTokenizer(kModel);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto text = ReadFile(std::string(kModel) + "/eval/heldout.jsonl");
  ASSERT_TRUE(text.ok());
  size_t start = 0, i = 0;
  const int eos = *(*tok)->TokenToId("<|eos|>");
  while (start < text->size()) {
    size_t end = text->find('\n', start);
    if (end == std::string::npos) end = text->size();
    if (end > start) {
      std::string t = nlohmann::json::parse(text->substr(start, end - start))["text"];
      auto ids = (*tok)->Encode(t, /*add_special_tokens=*/true);
      ASSERT_TRUE(ids.ok());
      ids->push_back(eos);
      ASSERT_LT(i, ref["heldout_token_ids"].size());
      EXPECT_EQ(*ids, ref["heldout_token_ids"][i].get<std::vector<int>>()) << t;
      ++i;
    }
    start = end + 1;
  }
  EXPECT_EQ(i, ref["heldout_token_ids"].size());
}

}  // namespace
}  // namespace moemesh
