#include "services/kvcache/local_kvcache.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "services/common/frame_socket.h"
#include "services/common/server_util.h"
#include "services/kvcache/kvcache_service.h"

namespace moemesh {
namespace {

BlockStore::Options InDir(const std::string& dir) {
  BlockStore::Options o;
  o.dir = dir;
  o.min_free_bytes = 16 << 20;
  return o;
}

}  // namespace

LocalKvCache::LocalKvCache(const std::string& dir, bool data_channel)
    : LocalKvCache(InDir(dir), nullptr, data_channel) {}

LocalKvCache::LocalKvCache(BlockStore::Options options, KvCacheMetrics* metrics, bool data_channel) {
  std::error_code ec;
  std::filesystem::remove_all(options.dir, ec);
  absl::StatusOr<std::unique_ptr<BlockStore>> store = BlockStore::Open(options);
  if (!store.ok()) {
    std::fprintf(stderr, "LocalKvCache: %s\n", store.status().ToString().c_str());
    std::abort();
  }
  store_ = std::move(*store);
  service_ = std::make_unique<KvCacheServiceImpl>(store_.get(), metrics);
  if (data_channel) {
    KvCacheServiceImpl* service = service_.get();
    auto frames = FrameServer::Start("127.0.0.1", 0, [service](FrameSocket* s) { service->ServeFrames(s); });
    if (!frames.ok()) {
      std::fprintf(stderr, "LocalKvCache: %s\n", frames.status().ToString().c_str());
      std::abort();
    }
    frames_ = std::move(*frames);
    service_->set_data_port(frames_->port());
  }
  int port = 0;
  server_ = StartServer("127.0.0.1:0", {service_.get()}, &port);
  if (server_ == nullptr) {
    std::fprintf(stderr, "LocalKvCache: cannot listen on loopback\n");
    std::abort();
  }
  address_ = absl::StrCat("127.0.0.1:", port);
}

LocalKvCache::~LocalKvCache() { Shutdown(); }

int LocalKvCache::data_port() const { return frames_ ? frames_->port() : 0; }

void LocalKvCache::Shutdown() {
  if (frames_) frames_->Stop();
  if (server_) server_->Shutdown(std::chrono::system_clock::now());
  server_.reset();
}

}  // namespace moemesh
