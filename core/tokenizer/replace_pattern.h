#ifndef MOEMESH_CORE_TOKENIZER_REPLACE_PATTERN_H_
#define MOEMESH_CORE_TOKENIZER_REPLACE_PATTERN_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/tokenizer/regex.h"
#include "nlohmann/json_fwd.hpp"

namespace moemesh {

// The "Replace" step shared by tokenizer.json normalizers and decoders:
// every match of a literal ({"String": ...}) or regex ({"Regex": ...})
// pattern becomes `content`. Immutable; thread-safe.
class ReplacePattern {
 public:
  // `j` is the component's JSON (with "pattern" and "content").
  static absl::StatusOr<std::unique_ptr<ReplacePattern>> Parse(const nlohmann::json& j, absl::string_view source);

  absl::StatusOr<std::string> Apply(const std::string& text) const;

 private:
  std::unique_ptr<Regex> re_;  // null for a literal pattern
  std::string literal_, content_;
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_TOKENIZER_REPLACE_PATTERN_H_
