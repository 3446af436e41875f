#include "core/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/common/file_util.h"
#include "core/common/status_macros.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

using Json = nlohmann::json;

absl::Status Corrupt(const std::string& path, absl::string_view what) {
  return absl::DataLossError(absl::StrCat(path, ": invalid safetensors file: ", what));
}

}  // namespace

int64_t TensorInfo::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorInfo::ShapeString() const {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) munmap(map_, map_size_);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  size_t size = 0;
  MM_ASSIGN_OR_RETURN(const int fd, OpenRegularFile(path, &size));
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile);
  f->path_ = path;
  if (size < 8) {
    ::close(fd);
    return Corrupt(path, absl::StrCat("file is ", size, " bytes, shorter than the 8-byte header length"));
  }
  void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) {
    return absl::InternalError(absl::StrCat("cannot mmap ", path, ": ", std::strerror(errno)));
  }
  f->map_ = map;
  f->map_size_ = size;
  const uint8_t* base = static_cast<const uint8_t*>(map);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];
  if (header_len > size - 8) {
    return Corrupt(path, absl::StrCat("header length ", header_len, " exceeds file size ", size,
                                      " (truncated file?)"));
  }
  const char* hdr = reinterpret_cast<const char*>(base + 8);
  Json j = Json::parse(hdr, hdr + header_len, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Corrupt(path, "header is not a JSON object");
  const uint8_t* data = base + 8 + header_len;
  size_t data_size = size - 8 - header_len;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const std::string& name = it.key();
    const Json& t = it.value();
    if (!t.is_object() || !t.contains("dtype") || !t["dtype"].is_string() ||
        !t.contains("shape") || !t["shape"].is_array() || !t.contains("data_offsets") ||
        !t["data_offsets"].is_array() || t["data_offsets"].size() != 2) {
      return Corrupt(path, absl::StrCat("tensor \"", name, "\" needs dtype, shape and data_offsets"));
    }
    TensorInfo info;
    info.name = name;
    info.file = path;
    auto dtype = ParseDType(t["dtype"].get<std::string>());
    if (!dtype.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor \"", name, "\": ", dtype.status().message()));
    }
    info.dtype = *dtype;
    for (const Json& d : t["shape"]) {
      if (!d.is_number_unsigned()) return Corrupt(path, absl::StrCat("tensor \"", name, "\" has a bad shape"));
      info.shape.push_back(d.get<int64_t>());
    }
    const Json& off = t["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
      return Corrupt(path, absl::StrCat("tensor \"", name, "\" has bad data_offsets"));
    }
    uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      return Corrupt(path, absl::StrCat("tensor \"", name, "\" spans bytes [", begin, ", ", end,
                                        ") but the data section has ", data_size,
                                        " bytes (truncated file?)"));
    }
    uint64_t expected = static_cast<uint64_t>(info.NumElements()) * DTypeSize(info.dtype);
    if (end - begin != expected) {
      return Corrupt(path, absl::StrCat("tensor \"", name, "\" has ", end - begin, " bytes but ",
                                        DTypeName(info.dtype), info.ShapeString(), " needs ",
                                        expected));
    }
    info.data = data + begin;
    info.nbytes = end - begin;
    f->tensors_.emplace(name, std::move(info));
  }
  // Weights are read many times per token; ask the kernel to keep them.
  madvise(map, size, MADV_WILLNEED);
  return f;
}

const TensorInfo* SafetensorsFile::Find(absl::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  auto ckpt = std::make_unique<Checkpoint>();
  ckpt->dir_ = dir;
  std::vector<std::string> shard_names;
  std::string index_path = JoinPath(dir, "model.safetensors.index.json");
  auto index_text = ReadFile(index_path);
  if (index_text.ok()) {
    Json j = Json::parse(index_text->begin(), index_text->end(), nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") ||
        !j["weight_map"].is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": expected a JSON object with a \"weight_map\" object"));
    }
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path, ": weight_map entry \"", it.key(), "\" is not a file name"));
      }
      std::string shard = it.value().get<std::string>();
      if (shard.find('/') != std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path, ": shard name \"", shard, "\" must be a plain file name"));
      }
      if (std::find(shard_names.begin(), shard_names.end(), shard) == shard_names.end()) {
        shard_names.push_back(shard);
      }
    }
  } else if (absl::IsNotFound(index_text.status())) {
    shard_names.push_back("model.safetensors");
  } else {
    return index_text.status();
  }
  for (const std::string& shard : shard_names) {
    auto file = SafetensorsFile::Open(JoinPath(dir, shard));
    if (!file.ok()) {
      if (absl::IsNotFound(file.status())) {
        return absl::NotFoundError(absl::StrCat(
            "no weights in ", dir, ": ", file.status().message(),
            " (expected model.safetensors or model.safetensors.index.json)"));
      }
      return file.status();
    }
    for (const auto& [name, info] : (*file)->tensors()) {
      if (!ckpt->index_.emplace(name, &info).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(dir, ": tensor \"", name, "\" appears in more than one shard"));
      }
    }
    ckpt->files_.push_back(std::move(*file));
  }
  return ckpt;
}

bool Checkpoint::Has(absl::string_view name) const { return index_.count(name) > 0; }

absl::StatusOr<TensorInfo> Checkpoint::Get(absl::string_view name) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(absl::StrCat("tensor \"", name, "\" is missing from checkpoint ", dir_));
  }
  return *it->second;
}

absl::StatusOr<TensorInfo> Checkpoint::GetFloat(absl::string_view name,
                                                const std::vector<int64_t>& shape) const {
  MM_ASSIGN_OR_RETURN(TensorInfo t, Get(name));
  if (t.dtype != DType::kF32 && t.dtype != DType::kF16 && t.dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat(t.file, ": tensor \"", name, "\" has dtype ",
                                                   DTypeName(t.dtype),
                                                   "; weights must be F32, F16 or BF16"));
  }
  if (t.shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        t.file, ": tensor \"", name, "\" has shape ", t.ShapeString(), ", expected [",
        absl::StrJoin(shape, ", "), "] from config.json"));
  }
  return t;
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors) {
  Json header = Json::object();
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    uint64_t n = 1;
    for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
    if (n * DTypeSize(t.dtype) != t.bytes.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor \"", t.name, "\": byte count does not match shape"));
    }
    header[t.name] = {{"dtype", std::string(DTypeName(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string h = header.dump();
  while (h.size() % 8 != 0) h.push_back(' ');
  std::string out;
  out.reserve(8 + h.size() + offset);
  uint64_t len = h.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  out += h;
  for (const TensorToWrite& t : tensors) out += t.bytes;
  return WriteFileAtomically(path, out);
}

}  // namespace moemesh
