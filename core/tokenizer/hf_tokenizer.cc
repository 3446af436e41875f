#include "core/tokenizer/hf_tokenizer.h"

#include <sys/stat.h>

#include <algorithm>
#include <optional>
#include <variant>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/common/file_util.h"
#include "core/common/status_macros.h"
#include "core/tokenizer/bpe.h"
#include "core/tokenizer/decoder.h"
#include "core/tokenizer/normalizer.h"
#include "core/tokenizer/pre_tokenizer.h"
#include "core/tokenizer/sentencepiece_tokenizer.h"
#include "core/tokenizer/unicode.h"
#include "core/tokenizer/utf8.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

using Json = nlohmann::json;

// A token added on top of the model's vocabulary, matched in the raw text.
struct AddedToken {
  int id;
  std::string content;
  bool special, lstrip, rstrip, single_word;
  bool normalized;  // matched in the normalized text rather than the raw input
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
  std::unique_ptr<TextNormalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<TokenDecoder> decoder_;
  std::vector<AddedToken> added_;  // longest content first
  absl::flat_hash_set<int> special_ids_;
  std::vector<std::string> added_by_id_;  // id -> content ("" if not added)
  std::optional<Template> template_;
  int vocab_size_ = 0;

 private:
  // Splits the text pieces around the added tokens whose `normalized` flag
  // equals `normalized` (leftmost, then longest match).
  std::vector<Piece> SplitAdded(std::vector<Piece> pieces, bool normalized) const;
};

bool WordCharBefore(absl::string_view text, size_t i) {
  if (i == 0) return false;
  size_t start = i - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  size_t p = start;
  return IsWordChar(NextCodePoint(text, &p));
}

bool WordCharAt(absl::string_view text, size_t i) {
  if (i >= text.size()) return false;
  return IsWordChar(NextCodePoint(text, &i));
}

// Whether the character ending at byte i (and starting at or after
// `lower`) is whitespace; sets *char_start to where it starts.
bool SpaceBefore(absl::string_view text, size_t i, size_t lower, size_t* char_start) {
  if (i <= lower) return false;
  size_t b = i - 1;
  while (b > lower && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
  size_t p = b;
  if (!IsWhitespace(NextCodePoint(text, &p))) return false;
  *char_start = b;
  return true;
}

std::vector<Piece> HfTokenizer::SplitAdded(std::vector<Piece> pieces, bool normalized) const {
  std::vector<Piece> out;
  for (Piece& piece : pieces) {
    if (piece.token >= 0) {
      out.push_back(std::move(piece));
      continue;
    }
    const std::string& text = piece.text;
    size_t start = 0, i = 0;
    while (i < text.size()) {
      const AddedToken* hit = nullptr;
      for (const AddedToken& a : added_) {  // longest first
        if (a.normalized != normalized || text.compare(i, a.content.size(), a.content) != 0) continue;
        if (a.single_word && (WordCharBefore(text, i) || WordCharAt(text, i + a.content.size()))) continue;
        hit = &a;
        break;
      }
      if (hit == nullptr) {
        ++i;
        continue;
      }
      size_t seg_end = i, next = i + hit->content.size();
      if (hit->lstrip) {
        // The token swallows the whitespace before it.
        size_t b;
        while (SpaceBefore(text, seg_end, start, &b)) seg_end = b;
      }
      if (hit->rstrip) {
        while (next < text.size()) {
          size_t p = next;
          if (!IsWhitespace(NextCodePoint(text, &p))) break;
          next = p;
        }
      }
      if (seg_end > start) out.push_back({text.substr(start, seg_end - start), -1, piece.at_start && start == 0});
      out.push_back({hit->content, hit->id, false});
      start = i = next;
    }
    if (start < text.size()) out.push_back({text.substr(start), -1, piece.at_start && start == 0});
  }
  return out;
}

absl::StatusOr<std::vector<int>> HfTokenizer::Encode(absl::string_view text, bool add_special_tokens) const {
  size_t bad = FirstInvalidUtf8(text);
  if (bad != text.size()) {
    return absl::InvalidArgumentError(absl::StrCat("text is not valid UTF-8 (byte offset ", bad, ")"));
  }
  std::vector<Piece> pieces = SplitAdded({Piece{std::string(text), -1, true}}, /*normalized=*/false);
  if (normalizer_) {
    for (Piece& p : pieces) {
      if (p.token < 0) {
        MM_ASSIGN_OR_RETURN(p.text, normalizer_->Apply(std::move(p.text)));
      }
    }
  }
  pieces = SplitAdded(std::move(pieces), /*normalized=*/true);
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
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int id : ids) {
    if (id < 0 || id >= vocab_size_) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " is outside the vocabulary [0, ", vocab_size_, ")"));
    }
    if (skip_special_tokens && special_ids_.contains(id)) continue;
    tokens.push_back(!added_by_id_[id].empty() ? added_by_id_[id] : bpe_->IdToToken(id));
  }
  if (!decoder_) return absl::StrJoin(tokens, " ");  // Hugging Face's default
  return absl::StrJoin(decoder_->DecodeChain(std::move(tokens)), "");
}

absl::Status Unsupported(absl::string_view source, absl::string_view what, const Json& j) {
  std::string type = j.is_object() && j.contains("type") && j["type"].is_string()
                         ? j["type"].get<std::string>()
                         : j.dump();
  return absl::UnimplementedError(
      absl::StrCat(source, ": unsupported ", what, " \"", type, "\""));
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
                 a.value("lstrip", false), a.value("rstrip", false), a.value("single_word", false),
                 a.value("normalized", !a.value("special", false))};
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
  if (!norm.is_null()) {
    MM_ASSIGN_OR_RETURN(tok->normalizer_, ParseNormalizer(norm, source));
  }
  const Json& pre = j.value("pre_tokenizer", Json());
  if (!pre.is_null()) {
    MM_ASSIGN_OR_RETURN(tok->pre_tokenizer_, ParsePreTokenizer(pre, source));
  }
  const Json& post = j.value("post_processor", Json());
  if (!post.is_null()) MM_RETURN_IF_ERROR(ParsePostProcessor(post, *tok, source, &tok->template_));
  const Json& dec = j.value("decoder", Json());
  if (!dec.is_null()) {
    MM_ASSIGN_OR_RETURN(tok->decoder_, ParseDecoder(dec, source));
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
  if (stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    // A model directory: tokenizer.json, else a SentencePiece tokenizer.model.
    file = JoinPath(path, "tokenizer.json");
    std::string spm = JoinPath(path, "tokenizer.model");
    if (stat(file.c_str(), &st) != 0 && stat(spm.c_str(), &st) == 0) return LoadSentencePiece(spm);
  } else if (absl::EndsWith(path, ".model")) {
    return LoadSentencePiece(path);
  }
  MM_ASSIGN_OR_RETURN(std::string text, ReadFile(file));
  return ParseHfTokenizer(text, file);
}

}  // namespace moemesh
