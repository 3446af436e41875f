#ifndef MOEMESH_CORE_ENGINE_PLACEMENT_H_
#define MOEMESH_CORE_ENGINE_PLACEMENT_H_

#include "absl/status/status.h"

namespace moemesh {

// Which expert-worker shard serves each (layer, expert): expert e of every
// layer lives on shard e mod num_shards, so each shard holds an equal slice
// of every layer and a decode step keeps all shards busy.
class ShardPlacement {
 public:
  explicit ShardPlacement(int num_shards) : num_shards_(num_shards) {}

  int num_shards() const { return num_shards_; }
  int ShardOf(int layer, int expert) const { return expert % num_shards_; }
  bool Holds(int shard, int layer, int expert) const { return ShardOf(layer, expert) == shard; }

  // INVALID_ARGUMENT unless 1 <= num_shards <= num_experts and
  // 0 <= shard_index < num_shards.
  static absl::Status Validate(int shard_index, int num_shards, int num_experts);

 private:
  int num_shards_;
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_ENGINE_PLACEMENT_H_
