#ifndef MOEMESH_CORE_TOKENIZER_STREAMING_DETOKENIZER_H_
#define MOEMESH_CORE_TOKENIZER_STREAMING_DETOKENIZER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tokenizer/tokenizer.h"

namespace moemesh {

// Turns a stream of token ids into text as it arrives, emitting only
// complete UTF-8: a character spread over several tokens (byte-level BPE,
// byte fallback) is held back until its last byte arrives. The
// concatenation of everything emitted, Finish included, equals Decode of all
// the ids. Not thread-safe; one per stream.
class StreamingDetokenizer {
 public:
  // `tokenizer` must outlive this object.
  StreamingDetokenizer(const Tokenizer* tokenizer, bool skip_special_tokens)
      : tok_(tokenizer), skip_special_(skip_special_tokens) {}

  // Adds one token; returns the text it completes (often empty).
  absl::StatusOr<std::string> Add(int id);
  // Returns what is still held back; an incomplete character becomes U+FFFD.
  absl::StatusOr<std::string> Finish();

 private:
  const Tokenizer* tok_;
  bool skip_special_;
  std::vector<int> ids_;
  size_t prefix_offset_ = 0;  // start of the window decoded for context
  size_t read_offset_ = 0;    // ids before this have been emitted
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_TOKENIZER_STREAMING_DETOKENIZER_H_
