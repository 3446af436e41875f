#include "services/kvcache_client/kvcache_tier.h"

#include <chrono>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "moemesh/v1/kvcache.grpc.pb.h"
#include "services/common/grpc_status.h"
#include "services/common/server_util.h"
#include "services/kvcache_client/rendezvous.h"
#include "services/common/tls.h"

namespace moemesh {

struct KvCacheTier::Rpc {
  std::vector<std::unique_ptr<v1::KvCacheService::Stub>> stubs;
};

namespace {

std::chrono::system_clock::time_point Deadline(absl::Duration d) {
  return std::chrono::system_clock::now() + absl::ToChronoMicroseconds(d);
}

}  // namespace

KvCacheTier::KvCacheTier(const Options& options) : options_(options), rpc_(std::make_unique<Rpc>()) {}

absl::StatusOr<std::unique_ptr<KvCacheTier>> KvCacheTier::Create(const Options& options) {
  if (options.addresses.empty()) return absl::InvalidArgumentError("--kvcache needs HOST:PORT[,HOST:PORT...]");
  for (const std::string& a : options.addresses) {
    if (a.empty()) return absl::InvalidArgumentError("--kvcache: an empty address in the list");
  }
  if (options.fetch_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("the kvcache fetch timeout must be positive");
  }
  std::unique_ptr<KvCacheTier> tier(new KvCacheTier(options));
  grpc::ChannelArguments args = ClientChannelArguments();
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 16 << 20);
  for (const std::string& a : options.addresses) {
    tier->rpc_->stubs.push_back(
        v1::KvCacheService::NewStub(grpc::CreateCustomChannel(a, MeshChannelCredentials(), args)));
  }
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

absl::StatusOr<std::vector<KvTierBlock>> KvCacheTier::Fetch(const BlockHash& root, absl::Span<const BlockHash> all,
                                                           size_t from) {
  if (from >= all.size()) return std::vector<KvTierBlock>();
  const absl::Span<const BlockHash> chain = all.subspan(from);
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(options_.fetch_timeout));
  v1::GetBlocksRequest req;
  req.set_root(root.Bytes());
  for (const BlockHash& h : chain) req.add_hashes(h.Bytes());
  std::unique_ptr<grpc::ClientReader<v1::GetBlocksResponse>> reader =
      rpc_->stubs[ReplicaOf(all[0])]->GetBlocks(&ctx, req);
  std::vector<KvTierBlock> out;
  v1::GetBlocksResponse resp;
  bool valid = true;
  while (valid && out.size() < chain.size() && reader->Read(&resp)) {
    v1::KvBlock& b = *resp.mutable_block();
    KvTierBlock block;
    absl::StatusOr<BlockHash> parent = BlockHash::FromBytes(b.parent());
    block.tokens.assign(b.tokens().begin(), b.tokens().end());
    valid = parent.ok() && b.hash() == chain[out.size()].Bytes() && Checksum64(b.data()) == b.checksum() &&
            ChainBlockHash(*parent, block.tokens) == chain[out.size()];
    if (!valid) break;  // keep what came before it
    block.hash = chain[out.size()];
    block.parent = *parent;
    block.bytes = std::move(*b.mutable_data());
    out.push_back(std::move(block));
  }
  if (!valid || out.size() == chain.size()) ctx.TryCancel();
  const grpc::Status st = reader->Finish();
  absl::MutexLock lock(&mu_);
  ++stats_.fetches;
  if (!st.ok() && st.error_code() != grpc::StatusCode::CANCELLED && out.empty()) {
    ++stats_.fetch_errors;
    return FromGrpcStatus(st);
  }
  stats_.fetched_blocks += static_cast<int64_t>(out.size());
  return out;
}

void KvCacheTier::Store(const BlockHash& root, const BlockHash& head, std::vector<KvTierBlock> blocks) {
  int64_t bytes = 0;
  for (const KvTierBlock& b : blocks) bytes += static_cast<int64_t>(b.bytes.size());
  absl::MutexLock lock(&mu_);
  if (queued_bytes_ + bytes > options_.max_queued_bytes) {
    stats_.dropped_blocks += static_cast<int64_t>(blocks.size());
    return;
  }
  queued_bytes_ += bytes;
  queue_.push_back(Batch{ReplicaOf(head), root, std::move(blocks)});
}

bool KvCacheTier::Put(const Batch& batch) {
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(options_.store_timeout));
  v1::PutBlocksResponse resp;
  std::unique_ptr<grpc::ClientWriter<v1::PutBlocksRequest>> writer =
      rpc_->stubs[batch.replica]->PutBlocks(&ctx, &resp);
  v1::PutBlocksRequest req;
  req.set_root(batch.root.Bytes());
  for (const KvTierBlock& b : batch.blocks) {
    v1::KvBlock* out = req.add_blocks();
    out->set_hash(b.hash.Bytes());
    out->set_parent(b.parent.Bytes());
    out->mutable_tokens()->Assign(b.tokens.begin(), b.tokens.end());
    out->set_data(b.bytes);
    out->set_checksum(Checksum64(b.bytes));
    if (!writer->Write(req)) break;
    req.clear_blocks();
  }
  writer->WritesDone();
  return writer->Finish().ok();
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
    for (const KvTierBlock& b : batch.blocks) bytes += static_cast<int64_t>(b.bytes.size());
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
