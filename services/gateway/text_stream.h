#ifndef MOEMESH_SERVICES_GATEWAY_TEXT_STREAM_H_
#define MOEMESH_SERVICES_GATEWAY_TEXT_STREAM_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tokenizer/streaming_detokenizer.h"

namespace moemesh {

class Tokenizer;

// Text of a generation as its tokens arrive, with stop sequences: emits
// whole UTF-8 characters only, holds back any tail that could be the start
// of a stop sequence, and once a stop sequence appears emits the text before
// it and nothing more (the stop sequence itself is not returned, as in
// vLLM and the OpenAI API). Not thread-safe; one per request.
class TextStream {
 public:
  // `tokenizer` must outlive this object. Stop sequences must be non-empty.
  TextStream(const Tokenizer* tokenizer, bool skip_special_tokens, std::vector<std::string> stops);

  // Adds one token; returns the text that is now safe to send.
  absl::StatusOr<std::string> Add(int id);
  // The generation ended without a stop sequence: returns what was held back.
  absl::StatusOr<std::string> Finish();
  // True once a stop sequence has appeared; Add and Finish then return "".
  bool stopped() const { return stopped_; }

 private:
  std::string Release();

  StreamingDetokenizer detok_;
  std::vector<std::string> stops_;
  std::string pending_;  // decoded, not yet sent
  bool stopped_ = false;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_GATEWAY_TEXT_STREAM_H_
