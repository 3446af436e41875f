#include "services/kvcache_client/kvcache_tier.h"

#include <chrono>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "moemesh/v1/kvcache.grpc.pb.h"
#include "services/common/grpc_status.h"
#include "services/common/server_util.h"

namespace moemesh {

struct KvCacheTier::Rpc {
  std::unique_ptr<v1::KvCacheService::Stub> stub;
};

namespace {

std::chrono::system_clock::time_point Deadline(absl::Duration d) {
  return std::chrono::system_clock::now() + absl::ToChronoMicroseconds(d);
}

}  // namespace

KvCacheTier::KvCacheTier(const Options& options) : options_(options), rpc_(std::make_unique<Rpc>()) {}

absl::StatusOr<std::unique_ptr<KvCacheTier>> KvCacheTier::Create(const Options& options) {
  if (options.address.empty()) return absl::InvalidArgumentError("--kvcache needs HOST:PORT");
  if (options.fetch_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("the kvcache fetch timeout must be positive");
  }
  std::unique_ptr<KvCacheTier> tier(new KvCacheTier(options));
  grpc::ChannelArguments args = ClientChannelArguments();
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 16 << 20);
  tier->rpc_->stub = v1::KvCacheService::NewStub(
      grpc::CreateCustomChannel(options.address, grpc::InsecureChannelCredentials(), args));
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

absl::StatusOr<std::vector<KvTierBlock>> KvCacheTier::Fetch(const BlockHash& root,
                                                           absl::Span<const BlockHash> chain) {
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(options_.fetch_timeout));
  v1::GetBlocksRequest req;
  req.set_root(root.Bytes());
  for (const BlockHash& h : chain) req.add_hashes(h.Bytes());
  std::unique_ptr<grpc::ClientReader<v1::GetBlocksResponse>> reader = rpc_->stub->GetBlocks(&ctx, req);
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

void KvCacheTier::Store(const BlockHash& root, std::vector<KvTierBlock> blocks) {
  int64_t bytes = 0;
  for (const KvTierBlock& b : blocks) bytes += static_cast<int64_t>(b.bytes.size());
  absl::MutexLock lock(&mu_);
  if (queued_bytes_ + bytes > options_.max_queued_bytes) {
    stats_.dropped_blocks += static_cast<int64_t>(blocks.size());
    return;
  }
  queued_bytes_ += bytes;
  queue_.emplace_back(root, std::move(blocks));
}

bool KvCacheTier::Put(const BlockHash& root, const std::vector<KvTierBlock>& blocks) {
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(options_.store_timeout));
  v1::PutBlocksResponse resp;
  std::unique_ptr<grpc::ClientWriter<v1::PutBlocksRequest>> writer = rpc_->stub->PutBlocks(&ctx, &resp);
  v1::PutBlocksRequest req;
  req.set_root(root.Bytes());
  for (const KvTierBlock& b : blocks) {
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
    std::pair<BlockHash, std::vector<KvTierBlock>> batch;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(+[](KvCacheTier* t) { return t->stop_ || !t->queue_.empty(); }, this));
      if (stop_) return;
      batch = std::move(queue_.front());
      queue_.pop_front();
      writing_ = true;
    }
    const bool ok = Put(batch.first, batch.second);
    int64_t bytes = 0;
    for (const KvTierBlock& b : batch.second) bytes += static_cast<int64_t>(b.bytes.size());
    absl::MutexLock lock(&mu_);
    writing_ = false;
    queued_bytes_ -= bytes;
    if (ok) {
      stats_.stored_blocks += static_cast<int64_t>(batch.second.size());
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
