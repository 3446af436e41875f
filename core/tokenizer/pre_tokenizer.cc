#include "core/tokenizer/pre_tokenizer.h"

#include <functional>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "core/common/status_macros.h"
#include "core/tokenizer/byte_level.h"
#include "core/tokenizer/regex.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

using Json = nlohmann::json;

// GPT-2's pattern, used by ByteLevel with use_regex.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// Rust's Unicode \w and \s, which Hugging Face's patterns mean.
#define MM_WORD R"(\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D})"
#define MM_SPACE R"(\t\n\x{0B}\f\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})"
constexpr char kWhitespacePattern[] = "[" MM_WORD "]+|[^" MM_WORD MM_SPACE "]+";
constexpr char kSpacePattern[] = "[" MM_SPACE "]+";
// Rust's char::is_ascii_punctuation or a Unicode punctuation category.
constexpr char kPunctuationPattern[] = R"([\p{P}!-/:-@\[-`{-~])";

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

absl::StatusOr<Behavior> ParseBehavior(const std::string& b, absl::string_view source) {
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  return absl::InvalidArgumentError(absl::StrCat(source, ": unknown split behavior \"", b, "\""));
}

// Splits `text` around the matches of `re` as Hugging Face's
// SplitDelimiterBehavior does; returns byte ranges.
absl::StatusOr<std::vector<std::pair<size_t, size_t>>> SplitRanges(const Regex& re, Behavior behavior,
                                                                    bool invert, const std::string& text) {
  MM_ASSIGN_OR_RETURN(auto matches, re.FindAll(text));
  std::vector<std::tuple<size_t, size_t, bool>> spans;  // (begin, end, is_delimiter)
  size_t prev = 0;
  for (auto [b, e] : matches) {
    if (b > prev) spans.emplace_back(prev, b, invert);
    spans.emplace_back(b, e, !invert);
    prev = e;
  }
  if (prev < text.size()) spans.emplace_back(prev, text.size(), invert);
  std::vector<std::pair<size_t, size_t>> out;
  switch (behavior) {
    case Behavior::kRemoved:
      for (auto [b, e, m] : spans) {
        if (!m) out.emplace_back(b, e);
      }
      break;
    case Behavior::kIsolated:
      for (auto [b, e, m] : spans) out.emplace_back(b, e);
      break;
    case Behavior::kMergedWithPrevious: {
      bool prev_match = false;
      for (auto [b, e, m] : spans) {
        if (m && !prev_match && !out.empty()) {
          out.back().second = e;
        } else {
          out.emplace_back(b, e);
        }
        prev_match = m;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool prev_match = false;
      for (auto [b, e, m] : spans) {
        if (!m && prev_match && !out.empty()) {
          out.back().second = e;
        } else {
          out.emplace_back(b, e);
        }
        prev_match = m;
      }
      break;
    }
    case Behavior::kContiguous: {
      bool prev_match = false;
      for (auto [b, e, m] : spans) {
        if (m && prev_match && !out.empty()) {
          out.back().second = e;
        } else {
          out.emplace_back(b, e);
        }
        prev_match = m;
      }
      break;
    }
  }
  return out;
}

// Applies fn to every text piece, replacing it by the pieces fn returns.
// Only the first sub-piece of a piece that was at the start stays there.
absl::Status MapPieces(std::vector<Piece>* pieces,
                       const std::function<absl::Status(const Piece&, std::vector<Piece>*)>& fn) {
  std::vector<Piece> out;
  out.reserve(pieces->size());
  for (Piece& p : *pieces) {
    if (p.token >= 0) {
      out.push_back(std::move(p));
      continue;
    }
    size_t first = out.size();
    MM_RETURN_IF_ERROR(fn(p, &out));
    for (size_t i = first; i < out.size(); ++i) out[i].at_start = p.at_start && i == first;
  }
  *pieces = std::move(out);
  return absl::OkStatus();
}

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(std::unique_ptr<Regex> re, Behavior b, bool invert)
      : re_(std::move(re)), behavior_(b), invert_(invert) {}
  absl::Status Apply(std::vector<Piece>* pieces) const override {
    return MapPieces(pieces, [&](const Piece& p, std::vector<Piece>* out) -> absl::Status {
      MM_ASSIGN_OR_RETURN(auto ranges, SplitRanges(*re_, behavior_, invert_, p.text));
      for (auto [b, e] : ranges) {
        if (e > b) out->push_back({p.text.substr(b, e - b)});
      }
      return absl::OkStatus();
    });
  }

 private:
  std::unique_ptr<Regex> re_;
  Behavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<Regex> re)
      : add_prefix_space_(add_prefix_space), re_(std::move(re)) {}
  absl::Status Apply(std::vector<Piece>* pieces) const override {
    return MapPieces(pieces, [&](const Piece& p, std::vector<Piece>* out) -> absl::Status {
      // The piece as it is, unless a space goes in front (no copy per piece).
      std::string prefixed;
      const bool prefix = add_prefix_space_ && !p.text.empty() && p.text[0] != ' ';
      if (prefix) prefixed = absl::StrCat(" ", p.text);
      const std::string& text = prefix ? prefixed : p.text;
      if (!re_) {
        out->push_back({BytesToByteLevel(text)});
        return absl::OkStatus();
      }
      MM_ASSIGN_OR_RETURN(auto ranges, SplitRanges(*re_, Behavior::kIsolated, false, text));
      for (auto [b, e] : ranges) {
        if (e > b) out->push_back({BytesToByteLevel(absl::string_view(text).substr(b, e - b))});
      }
      return absl::OkStatus();
    });
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> re_;
};

enum class PrependScheme { kAlways, kFirst, kNever };

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split, std::unique_ptr<Regex> re)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split), re_(std::move(re)) {}
  absl::Status Apply(std::vector<Piece>* pieces) const override {
    return MapPieces(pieces, [&](const Piece& p, std::vector<Piece>* out) -> absl::Status {
      std::string text = absl::StrReplaceAll(p.text, {{" ", replacement_}});
      bool starts = text.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts && (scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && p.at_start))) {
        text = replacement_ + text;
      }
      if (!split_) {
        out->push_back({std::move(text)});
        return absl::OkStatus();
      }
      MM_ASSIGN_OR_RETURN(auto ranges, SplitRanges(*re_, Behavior::kMergedWithNext, false, text));
      for (auto [b, e] : ranges) {
        if (e > b) out->push_back({text.substr(b, e - b)});
      }
      return absl::OkStatus();
    });
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
  std::unique_ptr<Regex> re_;  // the replacement, as a literal
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
  absl::Status Apply(std::vector<Piece>* pieces) const override {
    for (const auto& s : steps_) MM_RETURN_IF_ERROR(s->Apply(pieces));
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

absl::StatusOr<std::unique_ptr<PreTokenizer>> MakeSplit(absl::string_view pattern, Behavior b, bool invert) {
  MM_ASSIGN_OR_RETURN(auto re, Regex::Compile(pattern));
  return std::unique_ptr<PreTokenizer>(new SplitPreTokenizer(std::move(re), b, invert));
}

std::string Quote(absl::string_view literal) { return absl::StrCat("\\Q", literal, "\\E"); }

}  // namespace

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const Json& j, absl::string_view source) {
  std::string type = j.is_object() ? j.value("type", "") : "";
  if (type == "ByteLevel") {
    std::unique_ptr<Regex> re;
    if (j.value("use_regex", true)) {
      MM_ASSIGN_OR_RETURN(re, Regex::Compile(kGpt2Pattern));
    }
    return std::unique_ptr<PreTokenizer>(new ByteLevelPreTokenizer(j.value("add_prefix_space", true), std::move(re)));
  }
  if (type == "Split") {
    const Json& pattern = j.value("pattern", Json());
    std::string re;
    if (pattern.is_object() && pattern.contains("Regex")) {
      re = pattern["Regex"].get<std::string>();
    } else if (pattern.is_object() && pattern.contains("String")) {
      re = Quote(pattern["String"].get<std::string>());
    } else {
      return absl::InvalidArgumentError(absl::StrCat(source, ": Split needs a String or Regex pattern"));
    }
    MM_ASSIGN_OR_RETURN(Behavior b, ParseBehavior(j.value("behavior", "Isolated"), source));
    return MakeSplit(re, b, j.value("invert", false));
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (const Json& s : j.value("pretokenizers", Json::array())) {
      MM_ASSIGN_OR_RETURN(auto step, ParsePreTokenizer(s, source));
      steps.push_back(std::move(step));
    }
    return std::unique_ptr<PreTokenizer>(new SequencePreTokenizer(std::move(steps)));
  }
  if (type == "Metaspace") {
    std::string rep = j.value("replacement", "\xE2\x96\x81");
    PrependScheme scheme = PrependScheme::kAlways;
    if (j.contains("prepend_scheme")) {
      std::string s = j["prepend_scheme"].get<std::string>();
      if (s == "always") {
        scheme = PrependScheme::kAlways;
      } else if (s == "first") {
        scheme = PrependScheme::kFirst;
      } else if (s == "never") {
        scheme = PrependScheme::kNever;
      } else {
        return absl::InvalidArgumentError(absl::StrCat(source, ": unknown prepend_scheme \"", s, "\""));
      }
    } else if (j.contains("add_prefix_space")) {
      scheme = j["add_prefix_space"].get<bool>() ? PrependScheme::kAlways : PrependScheme::kNever;
    }
    MM_ASSIGN_OR_RETURN(auto re, Regex::Compile(Quote(rep)));
    return std::unique_ptr<PreTokenizer>(
        new MetaspacePreTokenizer(rep, scheme, j.value("split", true), std::move(re)));
  }
  if (type == "Digits") {
    return MakeSplit(j.value("individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)", Behavior::kIsolated, false);
  }
  if (type == "Punctuation") {
    MM_ASSIGN_OR_RETURN(Behavior b, ParseBehavior(j.value("behavior", "Isolated"), source));
    return MakeSplit(kPunctuationPattern, b, false);
  }
  if (type == "Whitespace") return MakeSplit(kWhitespacePattern, Behavior::kRemoved, true);
  if (type == "WhitespaceSplit") return MakeSplit(kSpacePattern, Behavior::kRemoved, false);
  return absl::UnimplementedError(absl::StrCat(source, ": unsupported pre_tokenizer \"",
                                               type.empty() ? j.dump() : type, "\""));
}

}  // namespace moemesh
