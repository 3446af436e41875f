// libFuzzer target for the tokenizer: the first byte picks what the rest of
// the input is fed to:
//   0: ParseHfTokenizer (a tokenizer.json), then encode a fixed string;
//   1-7: Encode with one of the test tokenizers (valid or invalid UTF-8);
//   8-15: Decode ids read from the bytes, and stream-decode them.
// Any crash, sanitizer report or timeout is a bug. Build: `make fuzz`.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tokenizer/hf_tokenizer.h"
#include "core/tokenizer/streaming_detokenizer.h"
#include "core/tokenizer/tokenizer.h"

namespace {

const std::vector<std::unique_ptr<moemesh::Tokenizer>>& Tokenizers() {
  static auto* list = [] {
    auto* v = new std::vector<std::unique_ptr<moemesh::Tokenizer>>;
    for (const char* name : {"gpt2", "llama3", "qwen2", "llama2", "mistral", "misc"}) {
      auto t = moemesh::LoadTokenizer(std::string("tests/fixtures/tokenizers/") + name + ".json");
      if (!t.ok()) __builtin_trap();  // run from the repository root
      v->push_back(std::move(*t));
    }
    auto spm = moemesh::LoadTokenizer("tests/fixtures/tokenizers/spm_bpe.model");
    if (!spm.ok()) __builtin_trap();
    v->push_back(std::move(*spm));
    return v;
  }();
  return *list;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0] % 16;
  std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
  const auto& toks = Tokenizers();
  if (mode == 0) {
    auto t = moemesh::ParseHfTokenizer(rest, "fuzz.json");
    if (t.ok()) (void)(*t)->Encode("Hello wörld 123 人生 <s>", true);
    return 0;
  }
  if (mode <= 7) {
    auto ids = toks[mode - 1]->Encode(rest, (size & 1) != 0);
    if (ids.ok()) {
      auto text = toks[mode - 1]->Decode(*ids, false);
      if (!text.ok()) __builtin_trap();  // ids from Encode must decode
    }
    return 0;
  }
  const auto& tok = toks[mode % toks.size()];
  std::vector<int> ids;
  for (size_t i = 0; i + 1 < rest.size(); i += 2) {
    ids.push_back((static_cast<uint8_t>(rest[i]) << 8 | static_cast<uint8_t>(rest[i + 1])) %
                  (tok->vocab_size() + 2) - 1);  // includes -1 and vocab_size
  }
  (void)tok->Decode(ids, (size & 1) != 0);
  moemesh::StreamingDetokenizer stream(tok.get(), false);
  for (int id : ids) {
    if (!stream.Add(id).ok()) break;
  }
  (void)stream.Finish();
  return 0;
}
