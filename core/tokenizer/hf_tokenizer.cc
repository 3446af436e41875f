#include "core/tokenizer/hf_tokenizer.h"

#include <sys/stat.h>

#include <algorithm>
#include <optional>
#include <variant>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "core/common/file_util.h"
#include "core/common/status_macros.h"
#include "core/tokenizer/bpe.h"
#include "core/tokenizer/byte_level.h"
#include "core/tokenizer/regex.h"
#include "core/tokenizer/utf8.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

using Json = nlohmann::json;

// GPT-2's pre-tokenization pattern, used by ByteLevel with use_regex.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// A piece of the input during pre-tokenization: text still to split, or a
// token already decided (an added token).
struct Piece {
  std::string text;
  int token = -1;  // >= 0: an added token's id
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits each text piece in place; added-token pieces pass through.
  virtual absl::Status Apply(std::vector<Piece>* pieces) const = 0;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Splits `text` around the matches of `re` the way Hugging Face's
// SplitDelimiterBehavior does.
absl::Status SplitText(const Regex& re, SplitBehavior behavior, bool invert, const std::string& text,
                       std::vector<std::string>* out) {
  MM_ASSIGN_OR_RETURN(auto matches, re.FindAll(text));
  // (begin, end, is_match) spans covering the text.
  std::vector<std::tuple<size_t, size_t, bool>> spans;
  size_t prev = 0;
  for (auto [b, e] : matches) {
    if (b > prev) spans.emplace_back(prev, b, false);
    spans.emplace_back(b, e, true);
    prev = e;
  }
  if (prev < text.size()) spans.emplace_back(prev, text.size(), false);
  if (invert) {
    for (auto& s : spans) std::get<2>(s) = !std::get<2>(s);
  }
  std::vector<std::pair<size_t, size_t>> pieces;
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (auto [b, e, m] : spans) {
        if (!m) pieces.emplace_back(b, e);
      }
      break;
    case SplitBehavior::kIsolated:
      for (auto [b, e, m] : spans) pieces.emplace_back(b, e);
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (auto [b, e, m] : spans) {
        if (m && !pieces.empty()) {
          pieces.back().second = e;
        } else {
          pieces.emplace_back(b, e);
        }
      }
      break;
    case SplitBehavior::kMergedWithNext: {
      bool pending = false;
      for (auto [b, e, m] : spans) {
        if (pending) {
          pieces.back().second = e;
        } else {
          pieces.emplace_back(b, e);
        }
        pending = m;
      }
      break;
    }
    case SplitBehavior::kContiguous: {
      bool last_match = false;
      for (auto [b, e, m] : spans) {
        if (m && last_match && !pieces.empty()) {
          pieces.back().second = e;
        } else {
          pieces.emplace_back(b, e);
        }
        last_match = m;
      }
      break;
    }
  }
  for (auto [b, e] : pieces) {
    if (e > b) out->push_back(text.substr(b, e - b));
  }
  return absl::OkStatus();
}

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(std::unique_ptr<Regex> re, SplitBehavior b, bool invert)
      : re_(std::move(re)), behavior_(b), invert_(invert) {}
  absl::Status Apply(std::vector<Piece>* pieces) const override {
    std::vector<Piece> out;
    for (Piece& p : *pieces) {
      if (p.token >= 0) {
        out.push_back(std::move(p));
        continue;
      }
      std::vector<std::string> parts;
      MM_RETURN_IF_ERROR(SplitText(*re_, behavior_, invert_, p.text, &parts));
      for (std::string& s : parts) out.push_back({std::move(s), -1});
    }
    *pieces = std::move(out);
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<Regex> re_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<Regex> re)
      : add_prefix_space_(add_prefix_space), re_(std::move(re)) {}
  absl::Status Apply(std::vector<Piece>* pieces) const override {
    std::vector<Piece> out;
    for (size_t i = 0; i < pieces->size(); ++i) {
      Piece& p = (*pieces)[i];
      if (p.token >= 0) {
        out.push_back(std::move(p));
        continue;
      }
      std::string text = p.text;
      if (add_prefix_space_ && !text.empty() && text[0] != ' ') text.insert(text.begin(), ' ');
      std::vector<std::string> parts;
      if (re_) {
        MM_RETURN_IF_ERROR(SplitText(*re_, SplitBehavior::kIsolated, false, text, &parts));
      } else {
        parts.push_back(text);
      }
      for (const std::string& s : parts) out.push_back({BytesToByteLevel(s), -1});
    }
    *pieces = std::move(out);
    return absl::OkStatus();
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> re_;
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  absl::Status Apply(std::vector<Piece>* pieces) const override {
    for (const auto& s : steps_) MM_RETURN_IF_ERROR(s->Apply(pieces));
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

// A token added on top of the model's vocabulary, matched in the raw text.
struct AddedToken {
  int id;
  std::string content;
  bool special, lstrip, rstrip, single_word;
};

// TemplateProcessing for a single sequence: ids to put before and after.
struct Template {
  std::vector<int> prefix, suffix;
};

class HfTokenizer : public Tokenizer {
 public:
  absl::StatusOr<std::vector<int>> Encode(absl::string_view text, bool add_special_tokens) const override;
  absl::StatusOr<std::string> Decode(absl::Span<const int> ids, bool skip_special_tokens) const override;
  int vocab_size() const override { return vocab_size_; }
  std::optional<int> TokenToId(absl::string_view token) const override {
    for (const AddedToken& a : added_) {
      if (a.content == token) return a.id;
    }
    return bpe_->TokenToId(token);
  }
  bool IsSpecial(int id) const override { return special_ids_.contains(id); }

  std::optional<BpeModel> bpe_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::vector<AddedToken> added_;  // longest content first
  absl::flat_hash_set<int> special_ids_;
  std::vector<std::string> added_by_id_;  // id -> content ("" if not added)
  std::optional<Template> template_;
  bool byte_level_decoder_ = false;
  int vocab_size_ = 0;

 private:
  // Splits text around added tokens (leftmost, then longest match).
  std::vector<Piece> SplitAdded(absl::string_view text) const;
};

bool IsWordChar(char c) {
  unsigned char u = static_cast<unsigned char>(c);
  return std::isalnum(u) || c == '_' || u >= 0x80;
}

std::vector<Piece> HfTokenizer::SplitAdded(absl::string_view text) const {
  std::vector<Piece> out;
  size_t start = 0, i = 0;
  std::string pending;
  while (i < text.size()) {
    const AddedToken* hit = nullptr;
    for (const AddedToken& a : added_) {  // sorted longest first
      if (text.compare(i, a.content.size(), a.content) != 0) continue;
      if (a.single_word) {
        bool before = i > 0 && IsWordChar(text[i - 1]);
        size_t end = i + a.content.size();
        bool after = end < text.size() && IsWordChar(text[end]);
        if (before || after) continue;
      }
      hit = &a;
      break;
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    size_t seg_end = i, next = i + hit->content.size();
    if (hit->lstrip) {
      while (seg_end > start && std::isspace(static_cast<unsigned char>(text[seg_end - 1]))) --seg_end;
    }
    if (hit->rstrip) {
      while (next < text.size() && std::isspace(static_cast<unsigned char>(text[next]))) ++next;
    }
    if (seg_end > start) out.push_back({std::string(text.substr(start, seg_end - start)), -1});
    out.push_back({hit->content, hit->id});
    start = i = next;
  }
  if (start < text.size()) out.push_back({std::string(text.substr(start)), -1});
  return out;
}

absl::StatusOr<std::vector<int>> HfTokenizer::Encode(absl::string_view text, bool add_special_tokens) const {
  size_t bad = FirstInvalidUtf8(text);
  if (bad != text.size()) {
    return absl::InvalidArgumentError(absl::StrCat("text is not valid UTF-8 (byte offset ", bad, ")"));
  }
  std::vector<Piece> pieces = SplitAdded(text);
  if (pre_tokenizer_) MM_RETURN_IF_ERROR(pre_tokenizer_->Apply(&pieces));
  std::vector<int> ids;
  if (add_special_tokens && template_) ids = template_->prefix;
  for (const Piece& p : pieces) {
    if (p.token >= 0) {
      ids.push_back(p.token);
    } else {
      MM_RETURN_IF_ERROR(bpe_->Tokenize(p.text, &ids));
    }
  }
  if (add_special_tokens && template_) ids.insert(ids.end(), template_->suffix.begin(), template_->suffix.end());
  return ids;
}

absl::StatusOr<std::string> HfTokenizer::Decode(absl::Span<const int> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int id : ids) {
    if (id < 0 || id >= vocab_size_) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " is outside the vocabulary [0, ", vocab_size_, ")"));
    }
    if (skip_special_tokens && special_ids_.contains(id)) continue;
    const std::string& tok = !added_by_id_[id].empty() ? added_by_id_[id] : bpe_->IdToToken(id);
    if (byte_level_decoder_) {
      // A token whose characters are not all byte stand-ins (an added token
      // such as "<|bos|>" is) keeps its own UTF-8, as in Hugging Face.
      std::string b;
      if (ByteLevelToBytes(tok, &b)) {
        bytes += b;
      } else {
        bytes += tok;
      }
    } else {
      bytes += tok;
    }
  }
  return Utf8Lossy(bytes);
}

absl::Status Unsupported(absl::string_view source, absl::string_view what, const Json& j) {
  std::string type = j.is_object() && j.contains("type") && j["type"].is_string()
                         ? j["type"].get<std::string>()
                         : j.dump();
  return absl::UnimplementedError(
      absl::StrCat(source, ": unsupported ", what, " \"", type, "\""));
}

absl::StatusOr<std::unique_ptr<Regex>> PatternOf(const Json& pattern, absl::string_view source) {
  if (pattern.is_object() && pattern.contains("Regex") && pattern["Regex"].is_string()) {
    return Regex::Compile(pattern["Regex"].get<std::string>());
  }
  if (pattern.is_object() && pattern.contains("String") && pattern["String"].is_string()) {
    // A literal: quote it for PCRE2.
    return Regex::Compile(absl::StrCat("\\Q", pattern["String"].get<std::string>(), "\\E"));
  }
  return absl::InvalidArgumentError(absl::StrCat(source, ": Split pattern must be {\"Regex\": ...} or {\"String\": ...}"));
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const Json& j, absl::string_view source) {
  if (!j.is_object() || !j.contains("type")) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": pre_tokenizer needs a \"type\""));
  }
  std::string type = j["type"].get<std::string>();
  if (type == "ByteLevel") {
    bool prefix = j.value("add_prefix_space", true);
    std::unique_ptr<Regex> re;
    if (j.value("use_regex", true)) {
      MM_ASSIGN_OR_RETURN(re, Regex::Compile(kGpt2Pattern));
    }
    return std::unique_ptr<PreTokenizer>(new ByteLevelPreTokenizer(prefix, std::move(re)));
  }
  if (type == "Split") {
    MM_ASSIGN_OR_RETURN(std::unique_ptr<Regex> re, PatternOf(j.value("pattern", Json()), source));
    std::string b = j.value("behavior", "Isolated");
    SplitBehavior behavior;
    if (b == "Removed") {
      behavior = SplitBehavior::kRemoved;
    } else if (b == "Isolated") {
      behavior = SplitBehavior::kIsolated;
    } else if (b == "MergedWithPrevious") {
      behavior = SplitBehavior::kMergedWithPrevious;
    } else if (b == "MergedWithNext") {
      behavior = SplitBehavior::kMergedWithNext;
    } else if (b == "Contiguous") {
      behavior = SplitBehavior::kContiguous;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(source, ": unknown Split behavior \"", b, "\""));
    }
    return std::unique_ptr<PreTokenizer>(new SplitPreTokenizer(std::move(re), behavior, j.value("invert", false)));
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (const Json& s : j.value("pretokenizers", Json::array())) {
      MM_ASSIGN_OR_RETURN(auto step, ParsePreTokenizer(s, source));
      steps.push_back(std::move(step));
    }
    return std::unique_ptr<PreTokenizer>(new SequencePreTokenizer(std::move(steps)));
  }
  return Unsupported(source, "pre_tokenizer", j);
}

absl::Status ParsePostProcessor(const Json& j, const HfTokenizer& tok, absl::string_view source,
                                std::optional<Template>* out) {
  std::string type = j.value("type", "");
  if (type == "ByteLevel") return absl::OkStatus();  // offsets only
  if (type == "Sequence") {
    for (const Json& p : j.value("processors", Json::array())) {
      MM_RETURN_IF_ERROR(ParsePostProcessor(p, tok, source, out));
    }
    return absl::OkStatus();
  }
  if (type != "TemplateProcessing") return Unsupported(source, "post_processor", j);
  Template t;
  bool seen_sequence = false;
  for (const Json& item : j.value("single", Json::array())) {
    if (item.contains("Sequence")) {
      seen_sequence = true;
      continue;
    }
    if (!item.contains("SpecialToken")) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": bad TemplateProcessing item ", item.dump()));
    }
    std::string name = item["SpecialToken"].value("id", "");
    const Json& specials = j.value("special_tokens", Json::object());
    if (!specials.contains(name) || !specials[name].contains("ids")) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": TemplateProcessing special token \"", name, "\" has no ids"));
    }
    for (const Json& id : specials[name]["ids"]) {
      (seen_sequence ? t.suffix : t.prefix).push_back(id.get<int>());
    }
  }
  *out = std::move(t);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Tokenizer>> ParseImpl(const Json& j, absl::string_view source) {
  auto tok = std::make_unique<HfTokenizer>();
  const Json& model = j.value("model", Json());
  if (!model.is_object()) return absl::InvalidArgumentError(absl::StrCat(source, ": missing \"model\""));
  std::string model_type = model.value("type", "BPE");
  if (model_type != "BPE") return Unsupported(source, "model", model);
  if (!model.contains("vocab") || !model["vocab"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": BPE model needs a \"vocab\" object"));
  }
  absl::flat_hash_map<std::string, int> vocab;
  for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) {
    if (!it.value().is_number_integer()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": vocab entry \"", it.key(), "\" is not an id"));
    }
    vocab[it.key()] = it.value().get<int>();
  }
  std::vector<std::pair<std::string, std::string>> merges;
  for (const Json& m : model.value("merges", Json::array())) {
    if (m.is_string()) {
      std::string s = m.get<std::string>();
      size_t sp = s.find(' ', 1);
      if (sp == std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat(source, ": merge \"", s, "\" is not \"a b\""));
      }
      merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      return absl::InvalidArgumentError(absl::StrCat(source, ": bad merge ", m.dump()));
    }
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && !model[key].is_null() && model[key] != "") {
      return absl::UnimplementedError(absl::StrCat(source, ": BPE ", key, " is not supported"));
    }
  }
  if (model.contains("dropout") && !model["dropout"].is_null()) {
    return absl::UnimplementedError(absl::StrCat(source, ": BPE dropout is not supported at inference"));
  }
  BpeModel::Options opt;
  if (model.contains("unk_token") && model["unk_token"].is_string()) opt.unk_token = model["unk_token"].get<std::string>();
  opt.byte_fallback = model.value("byte_fallback", false);
  opt.fuse_unk = model.value("fuse_unk", false);
  opt.ignore_merges = model.value("ignore_merges", false);
  auto bpe = BpeModel::Create(std::move(vocab), merges, opt);
  if (!bpe.ok()) return absl::InvalidArgumentError(absl::StrCat(source, ": ", bpe.status().message()));
  tok->bpe_ = std::move(*bpe);
  tok->vocab_size_ = tok->bpe_->vocab_size();

  for (const Json& a : j.value("added_tokens", Json::array())) {
    AddedToken t{a.value("id", -1), a.value("content", ""), a.value("special", false),
                 a.value("lstrip", false), a.value("rstrip", false), a.value("single_word", false)};
    if (t.id < 0 || t.content.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": added token needs an id and content: ", a.dump()));
    }
    tok->vocab_size_ = std::max(tok->vocab_size_, t.id + 1);
    if (t.special) tok->special_ids_.insert(t.id);
    tok->added_.push_back(t);
  }
  std::stable_sort(tok->added_.begin(), tok->added_.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
  tok->added_by_id_.assign(tok->vocab_size_, "");
  for (const AddedToken& a : tok->added_) tok->added_by_id_[a.id] = a.content;

  const Json& norm = j.value("normalizer", Json());
  if (!norm.is_null()) return Unsupported(source, "normalizer", norm);
  const Json& pre = j.value("pre_tokenizer", Json());
  if (!pre.is_null()) {
    MM_ASSIGN_OR_RETURN(tok->pre_tokenizer_, ParsePreTokenizer(pre, source));
  }
  const Json& post = j.value("post_processor", Json());
  if (!post.is_null()) MM_RETURN_IF_ERROR(ParsePostProcessor(post, *tok, source, &tok->template_));
  const Json& dec = j.value("decoder", Json());
  if (!dec.is_null()) {
    if (dec.value("type", "") != "ByteLevel") return Unsupported(source, "decoder", dec);
    tok->byte_level_decoder_ = true;
  }
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> ParseHfTokenizer(absl::string_view json_text,
                                                            absl::string_view source) {
  Json j = Json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a valid JSON object"));
  }
  try {
    return ParseImpl(j, source);
  } catch (const nlohmann::json::exception& e) {
    // A field of the wrong JSON type deep inside a component.
    return absl::InvalidArgumentError(absl::StrCat(source, ": malformed tokenizer.json: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path) {
  std::string file = path;
  struct stat st;
  if (stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) file = JoinPath(path, "tokenizer.json");
  MM_ASSIGN_OR_RETURN(std::string text, ReadFile(file));
  return ParseHfTokenizer(text, file);
}

}  // namespace moemesh
