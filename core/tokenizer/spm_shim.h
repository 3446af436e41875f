#ifndef MOEMESH_CORE_TOKENIZER_SPM_SHIM_H_
#define MOEMESH_CORE_TOKENIZER_SPM_SHIM_H_

#include <memory>
#include <string>
#include <vector>

namespace moemesh {

// A thin wall around libsentencepiece. Its header declares its own
// absl::string_view, which clashes with Abseil's, so only spm_shim.cc
// includes it, and this interface uses the standard library alone.
class SpmModel {
 public:
  // nullptr on failure, with *error set and *not_found telling why.
  static std::unique_ptr<SpmModel> Load(const std::string& path, std::string* error, bool* not_found);
  virtual ~SpmModel() = default;

  virtual bool Encode(const std::string& text, std::vector<int>* ids, std::string* error) const = 0;
  virtual bool Decode(const std::vector<int>& ids, std::string* text, std::string* error) const = 0;
  virtual int size() const = 0;
  virtual int bos_id() const = 0;
  virtual int unk_id() const = 0;
  virtual bool IsControl(int id) const = 0;
  virtual int PieceToId(const std::string& piece) const = 0;
  virtual std::string IdToPiece(int id) const = 0;
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_TOKENIZER_SPM_SHIM_H_
