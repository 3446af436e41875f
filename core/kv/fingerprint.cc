#include "core/kv/fingerprint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/common/file_util.h"

namespace moemesh {
namespace {

constexpr int kSamples = 16;
constexpr int64_t kSampleBytes = 4096;

// Appends what identifies one safetensors file to `desc`.
absl::Status DescribeSafetensors(const std::filesystem::path& path, std::string* desc) {
  std::ifstream in(path, std::ios::binary);
  std::error_code ec;
  const int64_t size = static_cast<int64_t>(std::filesystem::file_size(path, ec));
  if (!in || ec) return absl::NotFoundError(absl::StrCat("cannot read ", path.string()));
  absl::StrAppend(desc, "file ", path.filename().string(), " ", size, "\n");
  std::string buf(8, '\0');
  if (size < 8 || !in.read(buf.data(), 8)) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), " is too short for a safetensors file"));
  }
  uint64_t header = 0;
  for (int i = 7; i >= 0; --i) header = (header << 8) | static_cast<unsigned char>(buf[i]);
  if (header > static_cast<uint64_t>(size - 8)) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": header runs past the end of the file"));
  }
  buf.resize(header);
  in.read(buf.data(), static_cast<std::streamsize>(header));
  desc->append(buf);
  const int64_t data_start = 8 + static_cast<int64_t>(header);
  const int64_t data = size - data_start;
  buf.resize(kSampleBytes);
  for (int i = 0; i < kSamples && data > 0; ++i) {
    const int64_t len = std::min(kSampleBytes, data);
    const int64_t at = data_start + (data - len) * i / (kSamples - 1);
    in.seekg(at);
    in.read(buf.data(), len);
    desc->append(buf.data(), static_cast<size_t>(len));
  }
  if (!in) return absl::DataLossError(absl::StrCat("read of ", path.string(), " failed"));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<BlockHash> ModelFingerprint(const std::string& model_dir) {
  absl::StatusOr<std::string> config = ReadFile(JoinPath(model_dir, "config.json"));
  if (!config.ok()) return config.status();
  std::string desc = absl::StrCat("moemesh-model/1\n", *config, "\n");
  std::vector<std::filesystem::path> files;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(model_dir, ec)) {
    if (entry.path().extension() == ".safetensors") files.push_back(entry.path());
  }
  if (ec) return absl::NotFoundError(absl::StrCat("cannot list ", model_dir, ": ", ec.message()));
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    absl::Status st = DescribeSafetensors(f, &desc);
    if (!st.ok()) return st;
  }
  return HashBytes(desc);
}

int64_t CacheLayout::BlockBytes() const {
  return int64_t{KvDTypeBytes(dtype)} * block_size * num_layers * (k_width + v_width);
}

std::string CacheLayout::Describe() const {
  return absl::StrCat("moemesh-kv/1 dtype=", KvDTypeName(dtype), " block=", block_size, " layers=", num_layers, " k=", k_width,
                      " v=", v_width, extra.empty() ? "" : " ", extra);
}

BlockHash CacheRoot(const BlockHash& model, const CacheLayout& layout) {
  return HashBytes(absl::StrCat(model.Bytes(), layout.Describe()));
}

}  // namespace moemesh
