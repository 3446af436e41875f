#ifndef MOEMESH_SERVICES_KVCACHE_KVCACHE_SERVICE_H_
#define MOEMESH_SERVICES_KVCACHE_KVCACHE_SERVICE_H_

#include <atomic>

#include "moemesh/v1/kvcache.grpc.pb.h"
#include "services/kvcache/block_store.h"

namespace moemesh {

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

  // Calls in progress (for a graceful stop).
  int busy() const { return busy_.load(); }

 private:
  class Call;
  void AddBytes(bool in, size_t bytes);

  BlockStore* store_;
  KvCacheMetrics* metrics_;
  std::atomic<int> busy_{0};
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_KVCACHE_KVCACHE_SERVICE_H_
