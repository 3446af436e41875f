#ifndef MOEMESH_SERVICES_ROUTER_REMOTE_EXPERT_EXECUTOR_H_
#define MOEMESH_SERVICES_ROUTER_REMOTE_EXPERT_EXECUTOR_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/engine/expert_executor.h"
#include "core/engine/placement.h"

namespace moemesh {

// Runs a layer's routed experts on remote expert workers: one request per
// shard over a long-lived Dispatch stream each, all shards in flight at
// once, then adds the returned weighted rows per token in increasing expert
// order, exactly as LocalExpertExecutor does, so the mesh's logits equal
// the single-process engine's bit for bit. Not thread-safe: the engine
// calls it from its step thread.
class RemoteExpertExecutor : public ExpertExecutor {
 public:
  // `shard_addresses[i]` serves shard i of `shard_addresses.size()`.
  // Checks each worker's GetShardInfo against the placement; UNAVAILABLE
  // when a worker cannot be reached within `connect_timeout_ms`.
  static absl::StatusOr<std::unique_ptr<RemoteExpertExecutor>> Connect(
      const std::vector<std::string>& shard_addresses, int hidden_size, int connect_timeout_ms = 10000);
  ~RemoteExpertExecutor() override;

  absl::Status Execute(const ExpertBatch& batch, float* out) override;

 private:
  struct Shard;
  RemoteExpertExecutor() = default;
  absl::Status ExecuteOnce(const ExpertBatch& batch, float* out);

  std::vector<std::unique_ptr<Shard>> shards_;
  std::unique_ptr<ShardPlacement> placement_;
  int hidden_size_ = 0;
  uint64_t step_ = 0;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_ROUTER_REMOTE_EXPERT_EXECUTOR_H_
