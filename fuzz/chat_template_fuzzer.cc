// libFuzzer target for the Jinja engine: the input is a chat template,
// parsed and, when it parses, rendered over a small conversation. Errors
// are expected; a crash, sanitizer report, hang or runaway memory is a bug.
// Build: `make fuzz`.
#include <cstdint>
#include <string>

#include "core/jinja/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const nlohmann::ordered_json* context = new nlohmann::ordered_json(nlohmann::ordered_json::parse(R"({
    "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi 🙂"},
                 {"role": "assistant", "content": "<think>x</think>yo",
                  "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"a": 1.5}}}]},
                 {"role": "tool", "content": "42"}],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "add_generation_prompt": true, "bos_token": "<s>", "eos_token": "</s>"
  })"));
  auto t = moemesh::jinja::ChatTemplate::FromSource(std::string(reinterpret_cast<const char*>(data), size));
  if (t.ok()) (void)(*t)->Render(*context);
  return 0;
}
