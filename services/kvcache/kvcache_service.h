#ifndef MOEMESH_SERVICES_KVCACHE_KVCACHE_SERVICE_H_
#define MOEMESH_SERVICES_KVCACHE_KVCACHE_SERVICE_H_

#include <atomic>
#include <functional>
#include <string>

#include "moemesh/v1/kvcache.grpc.pb.h"
#include "services/kvcache/block_store.h"

namespace moemesh {

class FrameSocket;
class KvCacheMetrics;

// gRPC adapter of BlockStore: checks each message's shape (hash lengths,
// counts, the data checksum) and turns protos into store calls.
class KvCacheServiceImpl final : public v1::KvCacheService::Service {
 public:
  // `store` (and `metrics`, when given) must outlive the service.
  explicit KvCacheServiceImpl(BlockStore* store, KvCacheMetrics* metrics = nullptr)
      : store_(store), metrics_(metrics) {}

  // Most names a Lookup or GetBlocks may carry.
  static constexpr int kMaxChain = 65536;

  grpc::Status Lookup(grpc::ServerContext* context, const v1::LookupRequest* request,
                      v1::LookupResponse* response) override;
  grpc::Status PutBlocks(grpc::ServerContext* context, grpc::ServerReader<v1::PutBlocksRequest>* reader,
                         v1::PutBlocksResponse* response) override;
  grpc::Status GetBlocks(grpc::ServerContext* context, const v1::GetBlocksRequest* request,
                         grpc::ServerWriter<v1::GetBlocksResponse>* writer) override;
  grpc::Status GetSession(grpc::ServerContext* context, const v1::GetSessionRequest* request,
                          v1::Session* response) override;
  grpc::Status PutSession(grpc::ServerContext* context, const v1::PutSessionRequest* request,
                          v1::Session* response) override;
  grpc::Status DeleteSession(grpc::ServerContext* context, const v1::DeleteSessionRequest* request,
                             v1::DeleteSessionResponse* response) override;
  grpc::Status ListSessions(grpc::ServerContext* context, const v1::ListSessionsRequest* request,
                            v1::ListSessionsResponse* response) override;
  grpc::Status GetStats(grpc::ServerContext* context, const v1::GetStatsRequest* request,
                        v1::KvCacheStats* response) override;

  // Serves GetBlocks and PutBlocks on the raw data channel (FrameServer's
  // callback) until the caller leaves: KvFrame headers, the blocks' bytes
  // as payload or in the shared memory the caller set up for the
  // connection (KvFrame.shm_setup), the same checks and store calls as the
  // gRPC methods.
  void ServeFrames(FrameSocket* socket);
  // The data channel's port, advertised in GetStats with this host's id
  // (0: none).
  void set_data_port(int port);

  // The most shared memory one connection may ask to be mapped.
  static constexpr uint64_t kMaxSharedMemoryBytes = uint64_t{1} << 30;

  // Calls in progress (for a graceful stop).
  int busy() const { return busy_.load(); }

 private:
  class Call;
  void AddBytes(bool in, size_t bytes);
  // Checks block `index` of a put (hash, parent, `data` against its
  // checksum) and stores it.
  absl::Status PutBlock(const BlockHash& root, const v1::KvBlock& block, absl::string_view data, int index);
  // The held run of `request`'s chain, each block to `emit` (its data
  // apart, where the store holds it: valid only during the call; the
  // checksum is left to `emit`);
  // CANCELLED when `emit` says the caller left.
  absl::Status GetRun(const v1::GetBlocksRequest& request,
                      const std::function<bool(v1::KvBlock*, absl::string_view)>& emit);

  BlockStore* store_;
  KvCacheMetrics* metrics_;
  std::atomic<int> busy_{0};
  int data_port_ = 0;
  std::string host_id_;  // with a data channel: offered for shared memory
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_KVCACHE_KVCACHE_SERVICE_H_
