#include "services/kvcache_client/session_client.h"

#include <chrono>

#include <grpcpp/grpcpp.h>

#include "moemesh/v1/kvcache.grpc.pb.h"
#include "services/common/grpc_status.h"
#include "services/common/server_util.h"

namespace moemesh {

struct SessionClient::Rpc {
  std::unique_ptr<v1::KvCacheService::Stub> stub;
};

SessionClient::SessionClient(const std::string& address, const BlockHash& root, absl::Duration timeout)
    : rpc_(std::make_unique<Rpc>()), root_(root), timeout_(timeout) {
  rpc_->stub = v1::KvCacheService::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), ClientChannelArguments()));
}

SessionClient::~SessionClient() = default;

absl::StatusOr<SessionHistory> SessionClient::Load(const std::string& session_id) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMicroseconds(timeout_));
  v1::GetSessionRequest req;
  req.set_session_id(session_id);
  v1::Session s;
  const grpc::Status st = rpc_->stub->GetSession(&ctx, req, &s);
  SessionHistory h;
  if (st.error_code() == grpc::StatusCode::NOT_FOUND) return h;
  if (!st.ok()) return FromGrpcStatus(st);
  if (s.root() != root_.Bytes()) {
    return absl::FailedPreconditionError("session '" + session_id +
                                         "' holds the tokens of another model; use another session id");
  }
  h.tokens.assign(s.tokens().begin(), s.tokens().end());
  h.turn_starts.assign(s.turn_starts().begin(), s.turn_starts().end());
  h.version = s.version();
  return h;
}

absl::StatusOr<int64_t> SessionClient::Save(const std::string& session_id, const SessionHistory& history) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMicroseconds(timeout_));
  v1::PutSessionRequest req;
  req.set_session_id(session_id);
  req.set_root(root_.Bytes());
  req.mutable_tokens()->Assign(history.tokens.begin(), history.tokens.end());
  req.mutable_turn_starts()->Assign(history.turn_starts.begin(), history.turn_starts.end());
  if (history.version > 0) {
    req.set_expected_version(history.version);
  } else {
    req.set_create_only(true);
  }
  v1::Session s;
  const grpc::Status st = rpc_->stub->PutSession(&ctx, req, &s);
  if (!st.ok()) return FromGrpcStatus(st);
  return s.version();
}

}  // namespace moemesh
