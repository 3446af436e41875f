#include "core/tokenizer/spm_shim.h"

#include <sentencepiece_processor.h>

namespace moemesh {
namespace {

class SpmModelImpl : public SpmModel {
 public:
  sentencepiece::SentencePieceProcessor sp;

  bool Encode(const std::string& text, std::vector<int>* ids, std::string* error) const override {
    auto st = sp.Encode(text, ids);
    if (!st.ok()) *error = st.ToString();
    return st.ok();
  }
  bool Decode(const std::vector<int>& ids, std::string* text, std::string* error) const override {
    auto st = sp.Decode(ids, text);
    if (!st.ok()) *error = st.ToString();
    return st.ok();
  }
  int size() const override { return sp.GetPieceSize(); }
  int bos_id() const override { return sp.bos_id(); }
  int unk_id() const override { return sp.unk_id(); }
  bool IsControl(int id) const override { return sp.IsControl(id); }
  int PieceToId(const std::string& piece) const override { return sp.PieceToId(piece); }
  std::string IdToPiece(int id) const override { return sp.IdToPiece(id); }
};

}  // namespace

std::unique_ptr<SpmModel> SpmModel::Load(const std::string& path, std::string* error, bool* not_found) {
  auto m = std::make_unique<SpmModelImpl>();
  auto st = m->sp.Load(path);
  if (!st.ok()) {
    *error = st.ToString();
    *not_found = st.code() == sentencepiece::util::StatusCode::kNotFound;
    return nullptr;
  }
  return m;
}

}  // namespace moemesh
