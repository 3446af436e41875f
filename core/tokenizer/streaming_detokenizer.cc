#include "core/tokenizer/streaming_detokenizer.h"

#include "core/common/status_macros.h"

namespace moemesh {
namespace {

bool EndsWithReplacement(const std::string& s) {
  return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

}  // namespace

// Decodes the window [prefix_offset_, end) with and without the unread ids
// and emits the difference, as vLLM's incremental detokenizer: decoding a
// window keeps context-dependent decoders (leading-space stripping) stable.
absl::StatusOr<std::string> StreamingDetokenizer::Add(int id) {
  ids_.push_back(id);
  absl::Span<const int> all(ids_);
  MM_ASSIGN_OR_RETURN(std::string prefix,
                      tok_->Decode(all.subspan(prefix_offset_, read_offset_ - prefix_offset_), skip_special_));
  MM_ASSIGN_OR_RETURN(std::string text, tok_->Decode(all.subspan(prefix_offset_), skip_special_));
  if (text.size() > prefix.size() && !EndsWithReplacement(text) && text.compare(0, prefix.size(), prefix) == 0) {
    prefix_offset_ = read_offset_;
    read_offset_ = ids_.size();
    return text.substr(prefix.size());
  }
  return std::string();
}

absl::StatusOr<std::string> StreamingDetokenizer::Finish() {
  absl::Span<const int> all(ids_);
  MM_ASSIGN_OR_RETURN(std::string prefix,
                      tok_->Decode(all.subspan(prefix_offset_, read_offset_ - prefix_offset_), skip_special_));
  MM_ASSIGN_OR_RETURN(std::string text, tok_->Decode(all.subspan(prefix_offset_), skip_special_));
  prefix_offset_ = read_offset_ = ids_.size();
  if (text.size() > prefix.size()) return text.substr(prefix.size());
  return std::string();
}

}  // namespace moemesh
