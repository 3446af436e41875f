#include "core/tokenizer/sentencepiece_tokenizer.h"

#include "absl/strings/str_cat.h"
#include "core/tokenizer/spm_shim.h"
#include "core/tokenizer/utf8.h"

namespace moemesh {
namespace {

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(std::unique_ptr<SpmModel> sp)
      : sp_(std::move(sp)) {}

  absl::StatusOr<std::vector<int>> Encode(absl::string_view text, bool add_special_tokens) const override {
    size_t bad = FirstInvalidUtf8(text);
    if (bad != text.size()) {
      return absl::InvalidArgumentError(absl::StrCat("text is not valid UTF-8 (byte offset ", bad, ")"));
    }
    std::vector<int> ids;
    std::string error;
    if (!sp_->Encode(std::string(text), &ids, &error)) {
      return absl::InternalError(absl::StrCat("sentencepiece: ", error));
    }
    if (add_special_tokens && sp_->bos_id() >= 0) ids.insert(ids.begin(), sp_->bos_id());
    return ids;
  }

  absl::StatusOr<std::string> Decode(absl::Span<const int> ids, bool skip_special_tokens) const override {
    std::vector<int> keep;
    keep.reserve(ids.size());
    for (int id : ids) {
      if (id < 0 || id >= vocab_size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", id, " is outside the vocabulary [0, ", vocab_size(), ")"));
      }
      if (skip_special_tokens && IsSpecial(id)) continue;
      keep.push_back(id);
    }
    std::string text, error;
    if (!sp_->Decode(keep, &text, &error)) return absl::InternalError(absl::StrCat("sentencepiece: ", error));
    return Utf8Lossy(text);
  }

  int vocab_size() const override { return sp_->size(); }
  std::optional<int> TokenToId(absl::string_view token) const override {
    int id = sp_->PieceToId(std::string(token));
    if (id == sp_->unk_id() && token != sp_->IdToPiece(id)) return std::nullopt;
    return id;
  }
  bool IsSpecial(int id) const override { return sp_->IsControl(id); }

 private:
  std::unique_ptr<SpmModel> sp_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePiece(const std::string& path) {
  std::string error;
  bool not_found = false;
  std::unique_ptr<SpmModel> sp = SpmModel::Load(path, &error, &not_found);
  if (sp == nullptr) {
    std::string msg = absl::StrCat(path, ": not a loadable SentencePiece model: ", error);
    return not_found ? absl::NotFoundError(msg) : absl::InvalidArgumentError(msg);
  }
  return std::unique_ptr<Tokenizer>(new SentencePieceTokenizer(std::move(sp)));
}

}  // namespace moemesh
