#ifndef MOEMESH_CORE_KV_KV_DTYPE_H_
#define MOEMESH_CORE_KV_KV_DTYPE_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moemesh {

// What a KV cache stores for each key and value: fp32 (the CPU's cache, and
// the GPU's on request), bf16 (the GPU's default, as vLLM's "auto" for a
// bf16 model), or FP8 e4m3 (the GPU, on request: the value divided by a
// per-tensor scale, rounded to nearest and saturated at +-448).
enum class KvDType { kF32, kBf16, kF8E4M3 };

// The --kv-cache-dtype flag: "auto" (bfloat16 on a GPU, float32 on the
// CPU), "float32", "bfloat16", "fp8" or "fp8_e4m3". INVALID_ARGUMENT for
// anything else, and for a 16- or 8-bit cache on the CPU.
absl::StatusOr<KvDType> ParseKvCacheDType(absl::string_view flag, bool gpu);

// The name in CacheLayout (core/kv/fingerprint.h): "f32", "bf16", "f8e4m3".
absl::string_view KvDTypeName(KvDType dtype);

// Bytes of one stored element.
int KvDTypeBytes(KvDType dtype);

}  // namespace moemesh

#endif  // MOEMESH_CORE_KV_KV_DTYPE_H_
