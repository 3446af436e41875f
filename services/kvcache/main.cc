// moemesh-kvcache: keeps KV blocks and session records on disk for routers.
//   moemesh-kvcache --dir DIR [--capacity-mb MB] [--sync] [--session-ttl 168h] [--port P]
// Prints "listening on HOST:PORT" once serving; stops on SIGINT/SIGTERM.

#include <memory>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "prometheus/registry.h"
#include "services/common/frame_socket.h"
#include "services/common/service_main.h"
#include "services/common/tls.h"
#include "services/kvcache/block_store.h"
#include "services/kvcache/kvcache_metrics.h"
#include "services/kvcache/kvcache_service.h"

ABSL_FLAG(std::string, dir, "", "directory of the store (made if missing; RocksDB files)");
ABSL_FLAG(int64_t, capacity_mb, 16384, "bound on the blocks' bytes, in MiB: past it the least recently used go");
ABSL_FLAG(bool, sync, false,
          "fsync the write-ahead log before acknowledging a write: acknowledged writes then survive power loss, "
          "not only a crash of the process");
ABSL_FLAG(absl::Duration, session_ttl, absl::Hours(24 * 7), "a session is dropped this long after its last write");
ABSL_FLAG(int64_t, max_block_mb, 64, "largest block accepted, in MiB");
ABSL_FLAG(int, data_port, 0,
          "port of the raw data channel for GetBlocks and PutBlocks (0 picks a free one, -1 offers none; none "
          "under TLS)");
ABSL_FLAG(int64_t, min_free_mb, 512,
          "writes are refused (RESOURCE_EXHAUSTED) while the store's filesystem has less free space than this, "
          "in MiB: RocksDB's room to flush and compact");

namespace moemesh {
namespace {

int Main(int argc, char** argv) {
  ServiceMain service_main("moemesh-kvcache", argc, argv, "moemesh-kvcache --dir DIR [--capacity-mb MB] [--port P]");
  BlockStore::Options options;
  options.dir = absl::GetFlag(FLAGS_dir);
  options.capacity_bytes = absl::GetFlag(FLAGS_capacity_mb) << 20;
  options.sync = absl::GetFlag(FLAGS_sync);
  options.session_ttl = absl::GetFlag(FLAGS_session_ttl);
  options.max_block_bytes = absl::GetFlag(FLAGS_max_block_mb) << 20;
  options.min_free_bytes = absl::GetFlag(FLAGS_min_free_mb) << 20;
  if (absl::Status st = options.Validate(); !st.ok()) return service_main.Fail(st, 2);
  auto store = BlockStore::Open(options);
  if (!store.ok()) return service_main.Fail(store.status(), 1);

  auto registry = std::make_shared<prometheus::Registry>();
  KvCacheMetrics metrics(*registry);
  KvCacheServiceImpl service(store->get(), &metrics);
  std::unique_ptr<FrameServer> frames;  // stops after the gRPC server (destroyed after Serve returns)
  const int data_port = absl::GetFlag(FLAGS_data_port);
  // The raw data channel has no TLS: with TLS it is not offered, and
  // routers use gRPC.
  if (MeshTls().server_tls() && data_port >= 0) {
    service_main.Warn("TLS is on: the raw data channel is not offered; routers use gRPC");
  } else if (data_port >= 0) {
    auto f = FrameServer::Start(service_main.host(), data_port, [&service](FrameSocket* s) { service.ServeFrames(s); });
    if (!f.ok()) return service_main.Fail(f.status(), 1);
    frames = std::move(*f);
    service.set_data_port(frames->port());
  }
  absl::Notification stop;
  std::thread sweeper([&] {
    while (!stop.WaitForNotificationWithTimeout(absl::Minutes(1))) (*store)->SweepExpiredSessions();
  });
  service_main.set_service_names({v1::KvCacheService::service_full_name()});
  const int rc = service_main.Serve({&service}, registry, [&] { return service.busy(); });
  stop.Notify();
  sweeper.join();
  return rc;
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) { return moemesh::Main(argc, argv); }
