#include "core/engine/placement.h"

#include "absl/strings/str_cat.h"

namespace moemesh {

absl::Status ShardPlacement::Validate(int shard_index, int num_shards, int num_experts) {
  if (num_shards < 1 || num_shards > num_experts) {
    return absl::InvalidArgumentError(
        absl::StrCat("--num-shards must be in [1, ", num_experts, "] (the expert count), got ", num_shards));
  }
  if (shard_index < 0 || shard_index >= num_shards) {
    return absl::InvalidArgumentError(
        absl::StrCat("--shard-index must be in [0, ", num_shards, "), got ", shard_index));
  }
  return absl::OkStatus();
}

}  // namespace moemesh
