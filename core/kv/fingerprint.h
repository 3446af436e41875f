#ifndef MOEMESH_CORE_KV_FINGERPRINT_H_
#define MOEMESH_CORE_KV_FINGERPRINT_H_

#include <string>

#include "absl/status/statusor.h"
#include "core/kv/block_hash.h"
#include "core/kv/kv_dtype.h"

namespace moemesh {

// A fingerprint of a checkpoint directory: config.json whole, and of each
// *.safetensors file its size, its header (tensor names, dtypes, shapes,
// offsets) and 64 KiB of weight bytes sampled at 16 evenly spaced places.
// Two checkpoints of one shape with different weights differ in it; reading
// it costs a few megabytes, not the weights.
absl::StatusOr<BlockHash> ModelFingerprint(const std::string& model_dir);

// What a cached block's bytes depend on beside its tokens.
struct CacheLayout {
  KvDType dtype = KvDType::kF32;
  int block_size = 0;
  int num_layers = 0;
  int k_width = 0;  // elements of one position's key row (or latent row)
  int v_width = 0;
  // Anything else that changes the cached values (a routing override).
  std::string extra;

  // One block's bytes, all layers.
  int64_t BlockBytes() const;
  std::string Describe() const;
};

// The root of every block hash chain of a model under a layout: blocks
// match only between caches that agree on both.
BlockHash CacheRoot(const BlockHash& model, const CacheLayout& layout);

}  // namespace moemesh

#endif  // MOEMESH_CORE_KV_FINGERPRINT_H_
