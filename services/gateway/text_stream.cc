#include "services/gateway/text_stream.h"

#include <algorithm>

#include "core/common/status_macros.h"

namespace moemesh {

TextStream::TextStream(const Tokenizer* tokenizer, bool skip_special_tokens, std::vector<std::string> stops)
    : detok_(tokenizer, skip_special_tokens), stops_(std::move(stops)) {}

absl::StatusOr<std::string> TextStream::Add(int id) {
  if (stopped_) return std::string();
  MM_ASSIGN_OR_RETURN(std::string piece, detok_.Add(id));
  pending_ += piece;
  return Release();
}

absl::StatusOr<std::string> TextStream::Finish() {
  if (stopped_) return std::string();
  MM_ASSIGN_OR_RETURN(std::string rest, detok_.Finish());
  pending_ += rest;
  std::string out = Release();
  if (!stopped_) out += std::move(pending_);
  pending_.clear();
  return out;
}

// Sends pending_ up to the earliest stop sequence, or up to the longest
// tail that is a proper prefix of one. Nothing before pending_ can hold
// the start of a match, since that tail is always kept back.
std::string TextStream::Release() {
  size_t first = std::string::npos;
  for (const std::string& s : stops_) first = std::min(first, pending_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, first);
    pending_.clear();
    return out;
  }
  size_t keep = 0;
  for (const std::string& s : stops_) {
    for (size_t k = std::min(s.size() - 1, pending_.size()); k > keep; --k) {
      if (pending_.compare(pending_.size() - k, k, s, 0, k) == 0) {
        keep = k;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - keep);
  pending_.erase(0, pending_.size() - keep);
  return out;
}

}  // namespace moemesh
