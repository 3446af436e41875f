#include "core/kv/kv_dtype.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace moemesh {

absl::StatusOr<KvDType> ParseKvCacheDType(absl::string_view flag, bool gpu) {
  KvDType dtype;
  if (flag == "auto") {
    dtype = gpu ? KvDType::kBf16 : KvDType::kF32;
  } else if (flag == "float32") {
    dtype = KvDType::kF32;
  } else if (flag == "bfloat16") {
    dtype = KvDType::kBf16;
  } else if (flag == "fp8" || flag == "fp8_e4m3") {
    dtype = KvDType::kF8E4M3;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--kv-cache-dtype must be auto, float32, bfloat16, fp8 or fp8_e4m3; got '", flag, "'"));
  }
  if (!gpu && dtype != KvDType::kF32) {
    return absl::InvalidArgumentError(
        absl::StrCat("--kv-cache-dtype ", flag, " needs --device cuda: the CPU's KV cache is float32"));
  }
  return dtype;
}

absl::string_view KvDTypeName(KvDType dtype) {
  switch (dtype) {
    case KvDType::kF32: return "f32";
    case KvDType::kBf16: return "bf16";
    case KvDType::kF8E4M3: return "f8e4m3";
  }
  return "?";
}

int KvDTypeBytes(KvDType dtype) {
  switch (dtype) {
    case KvDType::kF32: return 4;
    case KvDType::kBf16: return 2;
    case KvDType::kF8E4M3: return 1;
  }
  return 0;
}

}  // namespace moemesh
