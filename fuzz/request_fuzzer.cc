// libFuzzer target for request validation, before anything reaches a
// router: the first byte picks what the rest of the input is.
//   0-3: a moemesh.v1.GenerateRequest in protobuf wire format, through the
//        gateway's BuildRouterRequest (with the demo model's tokenizer);
//   4-5: a /v1/completions body; 6-7: a /v1/chat/completions body (JSON);
//   8+:  an Open Inference Protocol ModelInferRequest (wire format).
// Errors are expected; a crash, sanitizer report or hang is a bug. Build:
// `make fuzz`.
#include <cstdint>
#include <memory>
#include <string>

#include "core/tokenizer/tokenizer.h"
#include "services/gateway/oip_api.h"
#include "services/gateway/openai_api.h"
#include "services/gateway/request_builder.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const moemesh::Tokenizer* tokenizer = [] {
    auto t = moemesh::LoadTokenizer("models/fortune-moe");
    if (!t.ok()) __builtin_trap();  // run from the repository root
    return t->release();
  }();
  static const moemesh::ServedModel model{"fortune-moe", "deepseek_v3", 4096, 1024};
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (data[0] % 10) {
    case 0:
    case 1:
    case 2:
    case 3: {
      moemesh::v1::GenerateRequest r;
      if (r.ParseFromString(rest)) (void)moemesh::BuildRouterRequest(r, tokenizer, model);
      break;
    }
    case 4:
    case 5:
      (void)moemesh::ParseCompletionRequest(rest);
      break;
    case 6:
    case 7:
      (void)moemesh::ParseChatRequest(rest);
      break;
    default: {
      inference::ModelInferRequest r;
      if (r.ParseFromString(rest)) (void)moemesh::ParseInferRequest(r);
    }
  }
  return 0;
}
