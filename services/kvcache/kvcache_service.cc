#include "services/kvcache/kvcache_service.h"

#include <sys/uio.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "services/common/frame_socket.h"
#include "services/common/grpc_status.h"
#include "services/common/host_id.h"
#include "services/common/shared_memory.h"
#include "services/kvcache/kvcache_metrics.h"

namespace moemesh {
namespace {

absl::StatusOr<BlockHash> ParseHash(const std::string& bytes, absl::string_view what) {
  absl::StatusOr<BlockHash> h = BlockHash::FromBytes(bytes);
  if (!h.ok()) return absl::InvalidArgumentError(absl::StrCat(what, ": ", h.status().message()));
  return h;
}

absl::StatusOr<std::vector<BlockHash>> ParseChain(const google::protobuf::RepeatedPtrField<std::string>& hashes) {
  if (hashes.size() > KvCacheServiceImpl::kMaxChain) {
    return absl::InvalidArgumentError(absl::StrCat(hashes.size(), " hashes in one call; at most ",
                                                   KvCacheServiceImpl::kMaxChain));
  }
  std::vector<BlockHash> chain;
  chain.reserve(hashes.size());
  for (int i = 0; i < hashes.size(); ++i) {
    absl::StatusOr<BlockHash> h = ParseHash(hashes[i], absl::StrCat("hashes[", i, "]"));
    if (!h.ok()) return h.status();
    chain.push_back(*h);
  }
  return chain;
}

void ToProto(const SessionRecord& r, bool with_tokens, v1::Session* out) {
  out->set_session_id(r.id);
  out->set_root(r.root.Bytes());
  if (with_tokens) {
    out->mutable_tokens()->Assign(r.tokens.begin(), r.tokens.end());
    out->mutable_turn_starts()->Assign(r.turn_starts.begin(), r.turn_starts.end());
  }
  out->set_version(r.version);
  out->set_updated_unix_ms(absl::ToUnixMillis(r.updated));
  out->set_token_count(static_cast<int>(r.tokens.size()));
}

}  // namespace

// Times a call, counts it as busy, and reports it with its status code.
class KvCacheServiceImpl::Call {
 public:
  Call(KvCacheServiceImpl* service, const char* method)
      : service_(service), method_(method), start_(std::chrono::steady_clock::now()) {
    ++service_->busy_;
  }
  grpc::Status Done(const absl::Status& st) {
    if (service_->metrics_ != nullptr) {
      service_->metrics_->Update(service_->store_->stats());
      service_->metrics_->ObserveCall(
          method_, absl::StatusCodeToString(st.code()),
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
    }
    --service_->busy_;
    return ToGrpcStatus(st);
  }

 private:
  KvCacheServiceImpl* service_;
  const char* method_;
  std::chrono::steady_clock::time_point start_;
};

void KvCacheServiceImpl::AddBytes(bool in, size_t bytes) {
  if (metrics_ != nullptr) metrics_->AddBytes(in, static_cast<double>(bytes));
}

grpc::Status KvCacheServiceImpl::Lookup(grpc::ServerContext*, const v1::LookupRequest* request,
                                        v1::LookupResponse* response) {
  Call call(this, "Lookup");
  absl::StatusOr<BlockHash> root = ParseHash(request->root(), "root");
  if (!root.ok()) return call.Done(root.status());
  absl::StatusOr<std::vector<BlockHash>> chain = ParseChain(request->hashes());
  if (!chain.ok()) return call.Done(chain.status());
  response->set_held(store_->LongestPrefix(*root, *chain));
  return call.Done(absl::OkStatus());
}

absl::Status KvCacheServiceImpl::PutBlock(const BlockHash& root, const v1::KvBlock& b, absl::string_view data,
                                          int index) {
  const std::string where = absl::StrCat("block ", index);
  BlockStore::BlockView block;
  absl::StatusOr<BlockHash> hash = ParseHash(b.hash(), absl::StrCat(where, " hash"));
  if (!hash.ok()) return hash.status();
  absl::StatusOr<BlockHash> parent = ParseHash(b.parent(), absl::StrCat(where, " parent"));
  if (!parent.ok()) return parent.status();
  if (Checksum64(data) != b.checksum()) {
    return absl::DataLossError(
        absl::StrCat(where, " (", hash->Hex(), "): its data does not match its checksum; nothing of it stored"));
  }
  block.hash = *hash;
  block.parent = *parent;
  block.tokens = absl::MakeConstSpan(b.tokens().data(), b.tokens().size());
  const size_t bytes = data.size();
  block.data = data;
  if (absl::Status st = store_->Put(root, block); !st.ok()) {
    return absl::Status(st.code(), absl::StrCat(where, ": ", st.message()));
  }
  AddBytes(/*in=*/true, bytes);
  return absl::OkStatus();
}

absl::Status KvCacheServiceImpl::GetRun(const v1::GetBlocksRequest& request,
                                        const std::function<bool(v1::KvBlock*, absl::string_view)>& emit) {
  absl::StatusOr<BlockHash> root = ParseHash(request.root(), "root");
  if (!root.ok()) return root.status();
  absl::StatusOr<std::vector<BlockHash>> chain = ParseChain(request.hashes());
  if (!chain.ok()) return chain.status();
  v1::KvBlock out;
  for (const BlockHash& h : *chain) {
    StoredBlock block;
    bool more = true;
    const absl::Status st = store_->Read(*root, h, &block, [&](absl::string_view data) {
      out.set_hash(h.Bytes());
      out.set_parent(block.parent.Bytes());
      out.mutable_tokens()->Assign(block.tokens.begin(), block.tokens.end());
      AddBytes(/*in=*/false, data.size());
      more = emit(&out, data);
    });
    if (absl::IsNotFound(st)) break;  // the run held ends here
    if (!st.ok()) return st;
    if (!more) return absl::CancelledError("the caller went away");
  }
  return absl::OkStatus();
}

grpc::Status KvCacheServiceImpl::PutBlocks(grpc::ServerContext*, grpc::ServerReader<v1::PutBlocksRequest>* reader,
                                           v1::PutBlocksResponse* response) {
  Call call(this, "PutBlocks");
  v1::PutBlocksRequest request;
  std::string root_bytes;
  BlockHash root;
  int stored = 0;
  while (reader->Read(&request)) {
    if (root_bytes.empty() || (!request.root().empty() && request.root() != root_bytes)) {
      if (!root_bytes.empty()) {
        return call.Done(absl::InvalidArgumentError("a PutBlocks stream carries blocks of one root"));
      }
      absl::StatusOr<BlockHash> r = ParseHash(request.root(), "root");
      if (!r.ok()) return call.Done(r.status());
      root_bytes = request.root();
      root = *r;
    }
    for (v1::KvBlock& b : *request.mutable_blocks()) {
      if (absl::Status st = PutBlock(root, b, b.data(), stored); !st.ok()) {
        response->set_stored(stored);
        return call.Done(st);
      }
      ++stored;
    }
  }
  response->set_stored(stored);
  return call.Done(absl::OkStatus());
}

grpc::Status KvCacheServiceImpl::GetBlocks(grpc::ServerContext* context, const v1::GetBlocksRequest* request,
                                           grpc::ServerWriter<v1::GetBlocksResponse>* writer) {
  Call call(this, "GetBlocks");
  v1::GetBlocksResponse response;
  return call.Done(GetRun(*request, [&](v1::KvBlock* b, absl::string_view data) {
    if (context->IsCancelled()) return false;
    *response.mutable_block() = *b;
    response.mutable_block()->set_checksum(Checksum64(data));
    response.mutable_block()->set_data(std::string(data));
    return writer->Write(response);
  }));
}

void KvCacheServiceImpl::set_data_port(int port) {
  data_port_ = port;
  host_id_ = port > 0 ? HostId() : "";
}

namespace {

// Where each block of a put frame lies: its bytes, in the payload (in
// order) or in the connection's shared memory; INVALID_ARGUMENT for sizes
// and offsets that do not add up, before anything is stored.
absl::StatusOr<std::vector<absl::string_view>> PutData(const v1::KvFrame& request, const std::vector<char>& payload,
                                                       const SharedMemory* shm) {
  const int n = request.put().blocks_size();
  if (request.data_sizes_size() != n || (request.shm_offsets_size() != 0 && request.shm_offsets_size() != n)) {
    return absl::InvalidArgumentError(absl::StrCat("a put frame of ", n, " blocks gives ", request.data_sizes_size(),
                                                   " sizes and ", request.shm_offsets_size(), " shared memory offsets"));
  }
  std::vector<absl::string_view> data;
  uint64_t in_payload = 0;
  for (int i = 0; i < n; ++i) {
    const uint64_t size = request.data_sizes(i);
    const int64_t offset = request.shm_offsets_size() ? request.shm_offsets(i) : -1;
    if (offset < 0) {
      if (size > payload.size() - in_payload) break;  // reported below
      data.emplace_back(payload.data() + in_payload, size);
      in_payload += size;
      continue;
    }
    if (shm == nullptr) {
      return absl::FailedPreconditionError("a put frame names shared memory offsets on a connection that set none up");
    }
    if (static_cast<uint64_t>(offset) > shm->size() || size > shm->size() - offset) {
      return absl::InvalidArgumentError(absl::StrCat("block ", i, ": ", size, " bytes at ", offset,
                                                     " past the shared memory's ", shm->size()));
    }
    data.emplace_back(shm->data() + offset, size);
  }
  if (static_cast<int>(data.size()) != n || in_payload != payload.size()) {
    return absl::InvalidArgumentError(absl::StrCat("a put frame's sizes of its payload blocks do not add up to its "
                                                   "payload of ", payload.size(), " bytes"));
  }
  return data;
}

}  // namespace

void KvCacheServiceImpl::ServeFrames(FrameSocket* socket) {
  v1::KvFrame request, answer;
  std::vector<char> payload;
  std::unique_ptr<SharedMemory> shm;  // the connection's, once set up
  while (socket->Receive(&request, &payload).ok()) {
    answer.Clear();
    absl::Status st;
    if (request.has_shm_setup()) {
      const v1::KvShmSetup& setup = request.shm_setup();
      if (host_id_.empty()) {
        st = absl::FailedPreconditionError("this kvcache service offers no shared memory");
      } else if (setup.size() == 0 || setup.size() > kMaxSharedMemoryBytes) {
        st = absl::InvalidArgumentError(
            absl::StrCat("shared memory of ", setup.size(), " bytes; 1 to ", kMaxSharedMemoryBytes));
      } else {
        absl::StatusOr<std::unique_ptr<SharedMemory>> m = SharedMemory::Open(setup.name(), setup.size());
        st = m.status();
        if (m.ok()) shm = std::move(*m);
      }
    } else if (request.has_get()) {
      Call call(this, "GetBlocks");
      v1::KvFrame part;
      uint64_t used = 0;  // of the shared memory, by this call's blocks
      st = GetRun(request.get(), [&](v1::KvBlock* b, absl::string_view data) {
        part.Clear();
        *part.add_blocks() = *b;
        part.add_data_sizes(data.size());
        // In shared memory the bytes cannot change on the way (the store
        // checked them against their own checksum): none is sent.
        if (shm != nullptr && data.size() <= shm->size() - used) {
          std::memcpy(shm->data() + used, data.data(), data.size());
          part.add_shm_offsets(static_cast<int64_t>(used));
          used += data.size();
          return socket->Send(part, {}).ok();
        }
        if (shm != nullptr) part.add_shm_offsets(-1);
        part.mutable_blocks(0)->set_checksum(Checksum64(data));
        iovec bytes{const_cast<char*>(data.data()), data.size()};
        return socket->Send(part, {&bytes, 1}).ok();
      });
      call.Done(st);
      if (absl::IsCancelled(st)) return;  // the router went away
    } else if (request.has_put()) {
      Call call(this, "PutBlocks");
      int stored = 0;
      absl::StatusOr<BlockHash> root = ParseHash(request.put().root(), "root");
      absl::StatusOr<std::vector<absl::string_view>> data = PutData(request, payload, shm.get());
      st = root.ok() ? data.status() : root.status();
      for (int i = 0; st.ok() && i < request.put().blocks_size(); ++i) {
        st = PutBlock(*root, request.put().blocks(i), (*data)[i], stored);
        if (st.ok()) ++stored;
      }
      answer.set_stored(stored);
      call.Done(st);
    } else {
      st = absl::InvalidArgumentError("a data channel frame must carry get, put or shm_setup");
    }
    answer.set_done(true);
    answer.set_error_code(static_cast<int>(st.code()));
    answer.set_error_message(std::string(st.message()));
    if (!socket->Send(answer, {}).ok()) return;
  }
}

grpc::Status KvCacheServiceImpl::GetSession(grpc::ServerContext*, const v1::GetSessionRequest* request,
                                            v1::Session* response) {
  Call call(this, "GetSession");
  absl::StatusOr<SessionRecord> r = store_->GetSession(request->session_id());
  if (!r.ok()) return call.Done(r.status());
  ToProto(*r, /*with_tokens=*/true, response);
  return call.Done(absl::OkStatus());
}

grpc::Status KvCacheServiceImpl::PutSession(grpc::ServerContext*, const v1::PutSessionRequest* request,
                                            v1::Session* response) {
  Call call(this, "PutSession");
  absl::StatusOr<BlockHash> root = ParseHash(request->root(), "root");
  if (!root.ok()) return call.Done(root.status());
  if (request->expected_version() < 0) {
    return call.Done(absl::InvalidArgumentError("expected_version must be 0 (any) or a version (> 0)"));
  }
  if (request->create_only() && request->expected_version() > 0) {
    return call.Done(absl::InvalidArgumentError("create_only and expected_version > 0 contradict each other"));
  }
  SessionRecord record;
  record.id = request->session_id();
  record.root = *root;
  record.tokens.assign(request->tokens().begin(), request->tokens().end());
  record.turn_starts.assign(request->turn_starts().begin(), request->turn_starts().end());
  const int64_t expected = request->create_only() ? 0 : request->expected_version() > 0 ? request->expected_version()
                                                                                        : -1;
  absl::StatusOr<SessionRecord> r = store_->PutSession(std::move(record), expected);
  if (!r.ok()) return call.Done(r.status());
  ToProto(*r, /*with_tokens=*/false, response);
  return call.Done(absl::OkStatus());
}

grpc::Status KvCacheServiceImpl::DeleteSession(grpc::ServerContext*, const v1::DeleteSessionRequest* request,
                                               v1::DeleteSessionResponse*) {
  Call call(this, "DeleteSession");
  return call.Done(store_->DeleteSession(request->session_id()));
}

grpc::Status KvCacheServiceImpl::ListSessions(grpc::ServerContext*, const v1::ListSessionsRequest* request,
                                              v1::ListSessionsResponse* response) {
  Call call(this, "ListSessions");
  const int limit = request->limit() == 0 ? 100 : request->limit();
  if (limit < 1 || limit > 1000) {
    return call.Done(absl::InvalidArgumentError(absl::StrCat("limit is 1 to 1000 (0: 100); got ", request->limit())));
  }
  absl::StatusOr<std::vector<SessionRecord>> list = store_->ListSessions(request->start_after(), limit);
  if (!list.ok()) return call.Done(list.status());
  for (const SessionRecord& r : *list) ToProto(r, /*with_tokens=*/false, response->add_sessions());
  return call.Done(absl::OkStatus());
}

grpc::Status KvCacheServiceImpl::GetStats(grpc::ServerContext*, const v1::GetStatsRequest*,
                                          v1::KvCacheStats* response) {
  Call call(this, "GetStats");
  const BlockStore::Stats s = store_->stats();
  response->set_blocks(s.blocks);
  response->set_block_bytes(s.block_bytes);
  response->set_capacity_bytes(s.capacity_bytes);
  response->set_sessions(s.sessions);
  response->set_evictions(s.evictions);
  response->set_corrupt_reads(s.corrupt_reads);
  response->set_data_port(data_port_);
  response->set_host_id(host_id_);
  return call.Done(absl::OkStatus());
}

}  // namespace moemesh
