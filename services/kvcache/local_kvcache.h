#ifndef MOEMESH_SERVICES_KVCACHE_LOCAL_KVCACHE_H_
#define MOEMESH_SERVICES_KVCACHE_LOCAL_KVCACHE_H_

#include <memory>
#include <string>

#include "services/kvcache/block_store.h"

namespace grpc {
class Server;
}  // namespace grpc

namespace moemesh {

class FrameServer;
class KvCacheMetrics;
class KvCacheServiceImpl;

// A kvcache service in this process, served over a loopback socket on a
// free port: a BlockStore in a fresh `dir` (emptied first) and the
// KvCacheService. For tests and benchmarks of its clients (routers,
// gateways, the CLI) that need a real service but no process; it offers
// its raw data channel unless `data_channel` is false. Aborts when the
// store does not open (a set-up error).
class LocalKvCache {
 public:
  // `options.dir` is emptied; min_free_bytes defaults to 16 MiB here.
  explicit LocalKvCache(BlockStore::Options options, KvCacheMetrics* metrics = nullptr, bool data_channel = true);
  explicit LocalKvCache(const std::string& dir, bool data_channel = true);
  ~LocalKvCache();

  const std::string& address() const { return address_; }  // 127.0.0.1:PORT
  int data_port() const;                                     // 0: none
  BlockStore* store() const { return store_.get(); }
  // Stops serving (a service that is down); idempotent.
  void Shutdown();

 private:
  std::unique_ptr<BlockStore> store_;
  std::unique_ptr<KvCacheServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<FrameServer> frames_;
  std::string address_;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_KVCACHE_LOCAL_KVCACHE_H_
