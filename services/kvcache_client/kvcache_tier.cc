#include "services/kvcache_client/kvcache_tier.h"

#include <sys/uio.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "moemesh/v1/kvcache.grpc.pb.h"
#include "services/common/frame_socket.h"
#include "services/common/grpc_status.h"
#include "services/common/host_id.h"
#include "services/common/server_util.h"
#include "services/common/shared_memory.h"
#include "services/kvcache_client/rendezvous.h"
#include "services/common/tls.h"

namespace moemesh {

// A data channel connection, and the memory it shares with the service
// (null: none).
struct KvCacheTier::Channel {
  std::unique_ptr<FrameSocket> socket;
  std::unique_ptr<SharedMemory> shm;
};

struct KvCacheTier::Rpc {
  struct Replica {
    std::unique_ptr<v1::KvCacheService::Stub> stub;
    std::string host;  // of the data channel; empty: not a plain HOST:PORT
    absl::Mutex mu;
    int data_port ABSL_GUARDED_BY(mu) = -1;  // -1: not asked yet; 0: none
    // The service shares memory: it is on this host, and has not refused.
    bool shares_memory ABSL_GUARDED_BY(mu) = false;
    std::vector<Channel> idle ABSL_GUARDED_BY(mu);  // connected, free
  };
  std::vector<std::unique_ptr<Replica>> replicas;
  int64_t shared_memory_bytes = 0;
  // Channels whose shared memory fetched blocks still pin (Lease): past
  // kMaxPinned a fetch copies its rows out instead, so that requests
  // waiting with fetched blocks do not hold memory without bound.
  static constexpr int kMaxPinned = 4;
  std::atomic<int> pinned{0};
  v1::KvCacheService::Stub& stub(int r) { return *replicas[r]->stub; }

  // A connected data channel of replica `r`, idle or new; a new one gets
  // shared memory where the service offers it (where that fails, it is
  // not asked again, and the bytes go through the socket).
  absl::StatusOr<Channel> Take(int r, absl::Duration timeout) {
    Replica& rep = *replicas[r];
    int port;
    bool share;
    {
      absl::MutexLock lock(&rep.mu);
      if (!rep.idle.empty()) {
        Channel c = std::move(rep.idle.back());
        rep.idle.pop_back();
        return c;
      }
      port = rep.data_port;
      share = rep.shares_memory;
    }
    Channel c;
    MM_ASSIGN_OR_RETURN(c.socket, FrameSocket::Connect(rep.host, port));
    if (!share) return c;
    absl::StatusOr<std::unique_ptr<SharedMemory>> shm = SharedMemory::Create(shared_memory_bytes);
    v1::KvFrame frame;
    if (shm.ok()) {
      frame.mutable_shm_setup()->set_name((*shm)->name());
      frame.mutable_shm_setup()->set_size((*shm)->size());
      std::vector<char> none;
      c.socket->SetReceiveTimeout(static_cast<int>(std::max<int64_t>(1, absl::ToInt64Milliseconds(timeout))));
      MM_RETURN_IF_ERROR(c.socket->Send(frame, {}));
      MM_RETURN_IF_ERROR(c.socket->Receive(&frame, &none));
    }
    if (!shm.ok() || !frame.done() || frame.error_code() != 0) {
      absl::MutexLock lock(&rep.mu);
      rep.shares_memory = false;  // another user, another IPC namespace: the socket it is
      return c;
    }
    (*shm)->Unlink();  // mapped on both sides: nothing is left behind when either goes
    c.shm = std::move(*shm);
    return c;
  }
  // Gives back a channel whose last exchange ended cleanly.
  void Give(int r, Channel c) {
    absl::MutexLock lock(&replicas[r]->mu);
    replicas[r]->idle.push_back(std::move(c));
  }
};

// A channel whose shared memory holds fetched rows (KvTierBlock::pin):
// back to the idle ones once the last block lets it go, if its exchange
// ended cleanly; closed otherwise.
struct KvCacheTier::Lease {
  std::shared_ptr<Rpc> rpc;
  int replica;
  Channel channel;
  bool clean = false;
  bool counted = false;  // in rpc->pinned
  ~Lease() {
    if (counted) --rpc->pinned;
    if (clean) rpc->Give(replica, std::move(channel));
  }
};

namespace {

std::chrono::system_clock::time_point Deadline(absl::Duration d) {
  return std::chrono::system_clock::now() + absl::ToChronoMicroseconds(d);
}

// Whether `b` (its data apart) is block `want` of the chain; its parent
// and tokens into `block`. The data is checked against b.checksum() unless
// it came through shared memory (`data` null), where it cannot change on
// the way and the service sends none.
bool Check(const v1::KvBlock& b, const absl::string_view* data, const BlockHash& want, KvTierBlock* block) {
  absl::StatusOr<BlockHash> parent = BlockHash::FromBytes(b.parent());
  block->tokens.assign(b.tokens().begin(), b.tokens().end());
  if (!parent.ok() || b.hash() != want.Bytes() || (data != nullptr && Checksum64(*data) != b.checksum()) ||
      ChainBlockHash(*parent, block->tokens) != want) {
    return false;
  }
  block->hash = want;
  block->parent = *parent;
  return true;
}

// The remaining time to `deadline` in whole milliseconds, at least 1.
int MillisLeft(absl::Time deadline) {
  return static_cast<int>(std::max<int64_t>(1, absl::ToInt64Milliseconds(deadline - absl::Now())));
}

}  // namespace

KvCacheTier::KvCacheTier(const Options& options) : options_(options), rpc_(std::make_shared<Rpc>()) {}

absl::StatusOr<std::unique_ptr<KvCacheTier>> KvCacheTier::Create(const Options& options) {
  if (options.addresses.empty()) return absl::InvalidArgumentError("--kvcache needs HOST:PORT[,HOST:PORT...]");
  for (const std::string& a : options.addresses) {
    if (a.empty()) return absl::InvalidArgumentError("--kvcache: an empty address in the list");
  }
  if (options.fetch_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("the kvcache fetch timeout must be positive");
  }
  if (options.shared_memory_bytes < 0 || options.shared_memory_bytes > (int64_t{1} << 30)) {  // KvShmSetup.size
    return absl::InvalidArgumentError("the kvcache shared memory is 0 (none) to 1 GiB a connection");
  }
  std::unique_ptr<KvCacheTier> tier(new KvCacheTier(options));
  grpc::ChannelArguments args = ClientChannelArguments();
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 16 << 20);
  for (const std::string& a : options.addresses) {
    auto r = std::make_unique<Rpc::Replica>();
    r->stub = v1::KvCacheService::NewStub(grpc::CreateCustomChannel(a, MeshChannelCredentials(), args));
    r->host = options.use_data_channel ? DataChannelHost(a) : "";
    tier->rpc_->replicas.push_back(std::move(r));
  }
  tier->rpc_->shared_memory_bytes = options.shared_memory_bytes;
  tier->writer_ = std::thread([t = tier.get()] { t->WriteLoop(); });
  return tier;
}

KvCacheTier::~KvCacheTier() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  writer_.join();
}

int KvCacheTier::ReplicaOf(const BlockHash& head) const {
  return static_cast<int>(RendezvousPick(options_.addresses, head.Bytes()));
}

bool KvCacheTier::HasDataChannel(int replica) {
  Rpc::Replica& r = *rpc_->replicas[replica];
  if (r.host.empty()) return false;
  {
    absl::MutexLock lock(&r.mu);
    if (r.data_port >= 0) return r.data_port > 0;
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(options_.fetch_timeout));
  v1::KvCacheStats stats;
  if (!r.stub->GetStats(&ctx, v1::GetStatsRequest(), &stats).ok()) return false;  // asked again next time
  absl::MutexLock lock(&r.mu);
  r.data_port = stats.data_port();
  r.shares_memory = rpc_->shared_memory_bytes > 0 && !stats.host_id().empty() && stats.host_id() == HostId();
  return r.data_port > 0;
}

absl::Status KvCacheTier::FetchGrpc(int replica, const BlockHash& root, absl::Span<const BlockHash> chain,
                                    std::vector<KvTierBlock>* out) {
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(options_.fetch_timeout));
  v1::GetBlocksRequest req;
  req.set_root(root.Bytes());
  for (const BlockHash& h : chain) req.add_hashes(h.Bytes());
  std::unique_ptr<grpc::ClientReader<v1::GetBlocksResponse>> reader = rpc_->stub(replica).GetBlocks(&ctx, req);
  v1::GetBlocksResponse resp;
  bool valid = true;
  while (valid && out->size() < chain.size() && reader->Read(&resp)) {
    KvTierBlock block;
    const absl::string_view data = resp.block().data();
    valid = Check(resp.block(), &data, chain[out->size()], &block);
    if (!valid) break;  // keep what came before it
    block.bytes = std::move(*resp.mutable_block()->mutable_data());
    out->push_back(std::move(block));
  }
  if (!valid || out->size() == chain.size()) ctx.TryCancel();
  const grpc::Status st = reader->Finish();
  return st.error_code() == grpc::StatusCode::CANCELLED ? absl::OkStatus() : FromGrpcStatus(st);
}

absl::Status KvCacheTier::FetchFrames(int replica, const BlockHash& root, absl::Span<const BlockHash> chain,
                                      std::vector<KvTierBlock>* out) {
  const absl::Time deadline = absl::Now() + options_.fetch_timeout;
  MM_ASSIGN_OR_RETURN(Channel taken, rpc_->Take(replica, options_.fetch_timeout));
  // Rows in the shared memory stay there (the blocks pin the channel), so
  // the lease owns the channel from the start: on an error too, the rows
  // already handed out stay mapped.
  auto lease = std::make_shared<Lease>();
  lease->rpc = rpc_;
  lease->replica = replica;
  lease->channel = std::move(taken);
  FrameSocket* socket = lease->channel.socket.get();
  const SharedMemory* shm = lease->channel.shm.get();
  // Rows stay in the shared memory (pinned) unless too many channels are.
  const bool pin = shm != nullptr && rpc_->pinned.fetch_add(1) < Rpc::kMaxPinned;
  if (shm != nullptr && !pin) --rpc_->pinned;
  lease->counted = pin;
  v1::KvFrame frame;
  v1::GetBlocksRequest* req = frame.mutable_get();
  req->set_root(root.Bytes());
  for (const BlockHash& h : chain) req->add_hashes(h.Bytes());
  MM_RETURN_IF_ERROR(socket->Send(frame, {}));
  std::string payload;
  bool valid = true;
  int64_t shared = 0;
  for (;;) {
    socket->SetReceiveTimeout(MillisLeft(deadline));
    MM_RETURN_IF_ERROR(socket->Receive(&frame, &payload));  // the socket is dropped
    if (frame.done()) break;
    if (!valid) continue;  // read to the end, to keep the socket
    KvTierBlock block;
    valid = out->size() < chain.size() && frame.blocks_size() == 1 && frame.data_sizes_size() == 1 &&
            frame.shm_offsets_size() <= 1;
    if (!valid) continue;
    const uint64_t size = frame.data_sizes(0);
    const int64_t offset = frame.shm_offsets_size() ? frame.shm_offsets(0) : -1;
    if (offset >= 0) {  // in the shared memory
      valid = shm != nullptr && payload.empty() && static_cast<uint64_t>(offset) <= shm->size() &&
              size <= shm->size() - offset && Check(frame.blocks(0), nullptr, chain[out->size()], &block);
      if (!valid) continue;
      if (pin) {
        block.view = absl::string_view(shm->data() + offset, size);
        block.pin = lease;
      } else {
        block.bytes.assign(shm->data() + offset, size);
      }
      ++shared;
    } else {
      const absl::string_view data = payload;
      valid = size == payload.size() && Check(frame.blocks(0), &data, chain[out->size()], &block);
      if (!valid) continue;
      block.bytes = std::move(payload);  // the next frame's bytes go to a new string
      payload = std::string();
    }
    out->push_back(std::move(block));
  }
  lease->clean = true;  // back to the idle channels once no block pins it
  CountSharedMemoryBlocks(shared);
  return absl::Status(static_cast<absl::StatusCode>(frame.error_code()), frame.error_message());
}

absl::StatusOr<std::vector<KvTierBlock>> KvCacheTier::Fetch(const BlockHash& root, absl::Span<const BlockHash> all,
                                                           size_t from) {
  if (from >= all.size()) return std::vector<KvTierBlock>();
  const absl::Span<const BlockHash> chain = all.subspan(from);
  const int replica = ReplicaOf(all[0]);
  std::vector<KvTierBlock> out;
  const absl::Status st = HasDataChannel(replica) ? FetchFrames(replica, root, chain, &out)
                                                  : FetchGrpc(replica, root, chain, &out);
  absl::MutexLock lock(&mu_);
  ++stats_.fetches;
  if (!st.ok() && out.empty()) {
    ++stats_.fetch_errors;
    return st;
  }
  stats_.fetched_blocks += static_cast<int64_t>(out.size());
  return out;
}

void KvCacheTier::Store(const BlockHash& root, const BlockHash& head, std::vector<KvTierBlock> blocks) {
  int64_t bytes = 0;
  for (const KvTierBlock& b : blocks) bytes += static_cast<int64_t>(b.data().size());
  absl::MutexLock lock(&mu_);
  if (queued_bytes_ + bytes > options_.max_queued_bytes) {
    stats_.dropped_blocks += static_cast<int64_t>(blocks.size());
    return;
  }
  queued_bytes_ += bytes;
  queue_.push_back(Batch{ReplicaOf(head), root, std::move(blocks)});
}

bool KvCacheTier::Put(const Batch& batch) {
  return HasDataChannel(batch.replica) ? PutFrames(batch) : PutGrpc(batch);
}

bool KvCacheTier::PutGrpc(const Batch& batch) {
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(options_.store_timeout));
  v1::PutBlocksResponse resp;
  std::unique_ptr<grpc::ClientWriter<v1::PutBlocksRequest>> writer = rpc_->stub(batch.replica).PutBlocks(&ctx, &resp);
  v1::PutBlocksRequest req;
  req.set_root(batch.root.Bytes());
  for (const KvTierBlock& b : batch.blocks) {
    v1::KvBlock* out = req.add_blocks();
    out->set_hash(b.hash.Bytes());
    out->set_parent(b.parent.Bytes());
    out->mutable_tokens()->Assign(b.tokens.begin(), b.tokens.end());
    out->set_data(b.data().data(), b.data().size());
    out->set_checksum(Checksum64(b.data()));
    if (!writer->Write(req)) break;
    req.clear_blocks();
  }
  writer->WritesDone();
  return writer->Finish().ok();
}

bool KvCacheTier::PutFrames(const Batch& batch) {
  absl::StatusOr<Channel> channel = rpc_->Take(batch.replica, options_.store_timeout);
  if (!channel.ok()) return false;
  FrameSocket* socket = channel->socket.get();
  const SharedMemory* shm = channel->shm.get();
  v1::KvFrame frame;
  v1::PutBlocksRequest* req = frame.mutable_put();
  req->set_root(batch.root.Bytes());
  std::vector<iovec> bytes;
  uint64_t used = 0;  // of the shared memory
  int64_t shared = 0;
  for (const KvTierBlock& b : batch.blocks) {
    v1::KvBlock* out = req->add_blocks();
    out->set_hash(b.hash.Bytes());
    out->set_parent(b.parent.Bytes());
    out->mutable_tokens()->Assign(b.tokens.begin(), b.tokens.end());
    const absl::string_view data = b.data();
    out->set_checksum(Checksum64(data));
    frame.add_data_sizes(data.size());
    if (shm != nullptr && data.size() <= shm->size() - used) {
      std::memcpy(shm->data() + used, data.data(), data.size());
      frame.add_shm_offsets(static_cast<int64_t>(used));
      used += data.size();
      ++shared;
      continue;
    }
    if (shm != nullptr) frame.add_shm_offsets(-1);
    bytes.push_back({const_cast<char*>(data.data()), data.size()});
  }
  std::vector<char> payload;
  socket->SetReceiveTimeout(static_cast<int>(absl::ToInt64Milliseconds(options_.store_timeout)));
  if (!socket->Send(frame, bytes).ok() || !socket->Receive(&frame, &payload).ok() || !frame.done()) {
    return false;  // the socket is dropped
  }
  rpc_->Give(batch.replica, std::move(*channel));
  const bool ok = frame.error_code() == 0 && frame.stored() == static_cast<int>(batch.blocks.size());
  if (ok) CountSharedMemoryBlocks(shared);
  return ok;
}

void KvCacheTier::CountSharedMemoryBlocks(int64_t n) {
  absl::MutexLock lock(&mu_);
  stats_.shared_memory_blocks += n;
}

void KvCacheTier::WriteLoop() {
  while (true) {
    Batch batch;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(+[](KvCacheTier* t) { return t->stop_ || !t->queue_.empty(); }, this));
      if (stop_) return;
      batch = std::move(queue_.front());
      queue_.pop_front();
      writing_ = true;
    }
    const bool ok = Put(batch);
    int64_t bytes = 0;
    for (const KvTierBlock& b : batch.blocks) bytes += static_cast<int64_t>(b.data().size());
    absl::MutexLock lock(&mu_);
    writing_ = false;
    queued_bytes_ -= bytes;
    if (ok) {
      stats_.stored_blocks += static_cast<int64_t>(batch.blocks.size());
    } else {
      ++stats_.store_errors;
    }
  }
}

void KvCacheTier::Flush() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(+[](KvCacheTier* t) { return t->stop_ || (t->queue_.empty() && !t->writing_); }, this));
}

KvCacheTier::Stats KvCacheTier::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace moemesh
