#ifndef MOEMESH_CORE_TENSOR_DTYPE_H_
#define MOEMESH_CORE_TENSOR_DTYPE_H_

#include <cstdint>
#include <cstring>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moemesh {

// Element types of weights and wire tensors.
// kF8E4M3: OCP FP8 E4M3 ("e4m3fn": no infinities, 0x7F/0xFF are NaN), as
// DeepSeek-V3's checkpoints store their weights (with block scales).
enum class DType : uint8_t { kF32, kF16, kBF16, kI8, kI32, kI64, kF8E4M3 };

// Bytes per element.
size_t DTypeSize(DType t);
// The safetensors spelling: "F32", "F16", "BF16", "I8", "I32", "I64", "F8_E4M3".
absl::string_view DTypeName(DType t);
// Parses the safetensors spelling; INVALID_ARGUMENT names unsupported types.
absl::StatusOr<DType> ParseDType(absl::string_view name);

// An E4M3 byte's value: its 7 magnitude bits placed at float's exponent
// and mantissa and scaled by 2^120 (the biases' difference) are exact for
// normal and subnormal values alike.
inline float F8E4M3ToF32(uint8_t v) {
  const uint32_t bits = (static_cast<uint32_t>(v & 0x7F) << 20) | (static_cast<uint32_t>(v & 0x80) << 24);
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f * 0x1p120f;
}

// The nearest E4M3 value to `f` (ties to even), saturating at ±448 (as
// torch's cast to float8_e4m3fn with clamping); NaN gives 0x7F.
uint8_t F32ToF8E4M3(float f);

inline float Bf16ToF32(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Round-to-nearest-even, as torch's float -> bfloat16 cast; NaN stays NaN.
inline uint16_t F32ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

// F32ToBf16 of `n` floats (a row on the wire, a kernel's inputs).
void F32ToBf16N(const float* src, size_t n, uint16_t* dst);

// IEEE half precision, exact for every value (subnormals included).
float F16ToF32(uint16_t v);
uint16_t F32ToF16(float f);

// Converts `n` elements of type `src_type` at `src` to float.
// Only floating types are accepted (checked by the caller).
void ConvertToF32(DType src_type, const void* src, size_t n, float* dst);

}  // namespace moemesh

#endif  // MOEMESH_CORE_TENSOR_DTYPE_H_
