#include "core/tokenizer/replace_pattern.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "core/common/status_macros.h"
#include "nlohmann/json.hpp"

namespace moemesh {

absl::StatusOr<std::unique_ptr<ReplacePattern>> ReplacePattern::Parse(const nlohmann::json& j,
                                                                      absl::string_view source) {
  const nlohmann::json& pattern = j.value("pattern", nlohmann::json());
  auto r = std::make_unique<ReplacePattern>();
  r->content_ = j.value("content", "");
  if (pattern.is_object() && pattern.contains("String")) {
    r->literal_ = pattern["String"].get<std::string>();
    if (r->literal_.empty()) return absl::InvalidArgumentError(absl::StrCat(source, ": Replace with an empty pattern"));
    return r;
  }
  if (pattern.is_object() && pattern.contains("Regex")) {
    MM_ASSIGN_OR_RETURN(r->re_, Regex::Compile(pattern["Regex"].get<std::string>()));
    return r;
  }
  return absl::InvalidArgumentError(absl::StrCat(source, ": Replace needs a String or Regex pattern"));
}

absl::StatusOr<std::string> ReplacePattern::Apply(const std::string& text) const {
  if (!re_) return absl::StrReplaceAll(text, {{literal_, content_}});
  MM_ASSIGN_OR_RETURN(auto matches, re_->FindAll(text));
  std::string out;
  size_t prev = 0;
  for (auto [b, e] : matches) {
    out.append(text, prev, b - prev);
    out += content_;
    prev = e;
  }
  out.append(text, prev, std::string::npos);
  return out;
}

}  // namespace moemesh
