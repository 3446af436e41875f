#ifndef MOEMESH_CORE_TOKENIZER_SPM_SHIM_H_
#define MOEMESH_CORE_TOKENIZER_SPM_SHIM_H_

#include <memory>
#include <string>
#include <vector>

namespace moemesh {

// A wall around libsentencepiece. Debian's build carries its own protobuf
// 3.14, which crashes a process that also loads libprotobuf 3.21 (gRPC), and
// its header declares an absl::string_view that clashes with Abseil's. So
// the library is reached only through libmoemesh_spm.so (spm_c_api.cc), a C
// interface loaded with a private symbol scope; this interface uses the
// standard library alone.
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
