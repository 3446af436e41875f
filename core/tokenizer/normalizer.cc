#include "core/tokenizer/normalizer.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/tokenizer/replace_pattern.h"
#include "core/tokenizer/unicode.h"
#include "core/tokenizer/utf8.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

using Json = nlohmann::json;

class SequenceNormalizer : public TextNormalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<TextNormalizer>> steps) : steps_(std::move(steps)) {}
  absl::StatusOr<std::string> Apply(std::string text) const override {
    for (const auto& s : steps_) {
      MM_ASSIGN_OR_RETURN(text, s->Apply(std::move(text)));
    }
    return text;
  }

 private:
  std::vector<std::unique_ptr<TextNormalizer>> steps_;
};

class UnicodeNormalizer : public TextNormalizer {
 public:
  explicit UnicodeNormalizer(NormalForm f) : form_(f) {}
  absl::StatusOr<std::string> Apply(std::string text) const override { return Normalize(text, form_); }

 private:
  NormalForm form_;
};

class LowercaseNormalizer : public TextNormalizer {
 public:
  absl::StatusOr<std::string> Apply(std::string text) const override { return Lowercase(text); }
};

class StripNormalizer : public TextNormalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  absl::StatusOr<std::string> Apply(std::string text) const override {
    size_t begin = 0, end = text.size();
    if (left_) {
      while (begin < end) {
        size_t p = begin;
        if (!IsWhitespace(NextCodePoint(text, &p))) break;
        begin = p;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
        size_t p = start;
        if (!IsWhitespace(NextCodePoint(text, &p))) break;
        end = start;
      }
    }
    return text.substr(begin, end - begin);
  }

 private:
  bool left_, right_;
};

class PrependNormalizer : public TextNormalizer {
 public:
  explicit PrependNormalizer(std::string p) : prepend_(std::move(p)) {}
  absl::StatusOr<std::string> Apply(std::string text) const override {
    return text.empty() ? text : prepend_ + text;
  }

 private:
  std::string prepend_;
};

class ReplaceNormalizer : public TextNormalizer {
 public:
  explicit ReplaceNormalizer(std::unique_ptr<ReplacePattern> r) : r_(std::move(r)) {}
  absl::StatusOr<std::string> Apply(std::string text) const override { return r_->Apply(text); }

 private:
  std::unique_ptr<ReplacePattern> r_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TextNormalizer>> ParseNormalizer(const Json& j, absl::string_view source) {
  std::string type = j.is_object() ? j.value("type", "") : "";
  if (type == "Sequence") {
    std::vector<std::unique_ptr<TextNormalizer>> steps;
    for (const Json& s : j.value("normalizers", Json::array())) {
      MM_ASSIGN_OR_RETURN(auto step, ParseNormalizer(s, source));
      steps.push_back(std::move(step));
    }
    return std::unique_ptr<TextNormalizer>(new SequenceNormalizer(std::move(steps)));
  }
  if (type == "NFC") return std::unique_ptr<TextNormalizer>(new UnicodeNormalizer(NormalForm::kNfc));
  if (type == "NFD") return std::unique_ptr<TextNormalizer>(new UnicodeNormalizer(NormalForm::kNfd));
  if (type == "NFKC") return std::unique_ptr<TextNormalizer>(new UnicodeNormalizer(NormalForm::kNfkc));
  if (type == "NFKD") return std::unique_ptr<TextNormalizer>(new UnicodeNormalizer(NormalForm::kNfkd));
  if (type == "Lowercase") return std::unique_ptr<TextNormalizer>(new LowercaseNormalizer);
  if (type == "Strip") {
    return std::unique_ptr<TextNormalizer>(
        new StripNormalizer(j.value("strip_left", true), j.value("strip_right", true)));
  }
  if (type == "Prepend") return std::unique_ptr<TextNormalizer>(new PrependNormalizer(j.value("prepend", "")));
  if (type == "Replace") {
    MM_ASSIGN_OR_RETURN(auto r, ReplacePattern::Parse(j, source));
    return std::unique_ptr<TextNormalizer>(new ReplaceNormalizer(std::move(r)));
  }
  return absl::UnimplementedError(absl::StrCat(source, ": unsupported normalizer \"",
                                               type.empty() ? j.dump() : type, "\""));
}

}  // namespace moemesh
