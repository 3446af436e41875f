#ifndef MOEMESH_CORE_MODEL_SAFETENSORS_H_
#define MOEMESH_CORE_MODEL_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/tensor/dtype.h"

namespace moemesh {

// One tensor inside a memory-mapped safetensors file. `data` stays valid as
// long as the SafetensorsFile (or Checkpoint) that returned it lives.
struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
  std::string file;  // for error messages

  int64_t NumElements() const;
  std::string ShapeString() const;  // "[512, 64]"
};

// A read-only, memory-mapped .safetensors file. The header is validated on
// Open: every tensor's byte range must lie inside the file and match its
// dtype and shape. Thread-safe after Open.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // nullptr when absent.
  const TensorInfo* Find(absl::string_view name) const;
  const std::map<std::string, TensorInfo, std::less<>>& tensors() const { return tensors_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorInfo, std::less<>> tensors_;
};

// A Hugging Face checkpoint directory: model.safetensors, or shards listed in
// model.safetensors.index.json. Thread-safe after Open.
class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  bool Has(absl::string_view name) const;
  // NOT_FOUND naming the tensor and the checkpoint when absent.
  absl::StatusOr<TensorInfo> Get(absl::string_view name) const;
  // Like Get, and checks dtype is floating and shape equals `shape`;
  // INVALID_ARGUMENT naming file, tensor, expected and actual shapes.
  absl::StatusOr<TensorInfo> GetFloat(absl::string_view name,
                                      const std::vector<int64_t>& shape) const;
  size_t num_tensors() const { return index_.size(); }
  // The weight files, in the order the index names them.
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorInfo*, std::less<>> index_;
};

// A tensor to write: raw little-endian bytes of `dtype` elements.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

// Writes a safetensors file (header padded to 8 bytes, tensors in order).
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors);

}  // namespace moemesh

#endif  // MOEMESH_CORE_MODEL_SAFETENSORS_H_
