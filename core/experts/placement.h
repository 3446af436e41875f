#ifndef MOEMESH_CORE_EXPERTS_PLACEMENT_H_
#define MOEMESH_CORE_EXPERTS_PLACEMENT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace moemesh {

// Which expert-worker shard serves each (layer, expert). By default expert
// e of every layer lives on shard e mod num_shards, so each shard holds an
// equal slice of every layer and a decode step keeps all shards busy. A
// placement file can say otherwise (e.g. to balance measured load):
//
//   {"shards": [[0, 1, 2], [3, 4, 5, 6, 7]],         // experts of each shard, every layer
//    "layers": {"2": [[0, 2, 4, 6], [1, 3, 5, 7]]}}  // optional per-layer overrides
//
// Every layer must place each expert on exactly one shard. Immutable.
class ShardPlacement {
 public:
  // The default, modulo placement.
  explicit ShardPlacement(int num_shards) : num_shards_(num_shards) {}

  // Reads and checks a placement file for a model of `num_layers` layers
  // with `num_experts` experts each. INVALID_ARGUMENT names the problem.
  static absl::StatusOr<ShardPlacement> Load(const std::string& path, int num_layers, int num_experts);
  // As Load, from the file's text (`origin` names it in errors).
  static absl::StatusOr<ShardPlacement> Parse(const std::string& json, const std::string& origin, int num_layers,
                                              int num_experts);

  int num_shards() const { return num_shards_; }
  int ShardOf(int layer, int expert) const {
    return table_.empty() ? expert % num_shards_ : table_[layer][expert];
  }
  bool Holds(int shard, int layer, int expert) const { return ShardOf(layer, expert) == shard; }
  // Experts of `layer` that `shard` holds, in increasing order.
  std::vector<int> ExpertsOf(int shard, int layer, int num_experts) const;

  // INVALID_ARGUMENT unless 1 <= num_shards <= num_experts and
  // 0 <= shard_index < num_shards.
  static absl::Status Validate(int shard_index, int num_shards, int num_experts);

 private:
  int num_shards_;
  std::vector<std::vector<int>> table_;  // [layer][expert] -> shard; empty: modulo
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_EXPERTS_PLACEMENT_H_
