#include "services/kvcache_client/session_client.h"

#include <chrono>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_split.h"
#include "moemesh/v1/kvcache.grpc.pb.h"
#include "services/common/grpc_status.h"
#include "services/common/server_util.h"
#include "services/kvcache_client/rendezvous.h"
#include "services/common/tls.h"

namespace moemesh {

struct SessionClient::Rpc {
  std::unique_ptr<v1::KvCacheService::Stub> stub;
};

SessionClient::SessionClient(const std::string& addresses, const BlockHash& root, absl::Duration timeout)
    : addresses_(absl::StrSplit(addresses, ',')), root_(root), timeout_(timeout) {
  for (const std::string& a : addresses_) {
    rpcs_.push_back(std::make_unique<Rpc>());
    rpcs_.back()->stub =
        v1::KvCacheService::NewStub(grpc::CreateCustomChannel(a, MeshChannelCredentials(), ClientChannelArguments()));
  }
}

SessionClient::Rpc& SessionClient::For(const std::string& session_id) const {
  return *rpcs_[RendezvousPick(addresses_, session_id)];
}

SessionClient::~SessionClient() = default;

absl::StatusOr<SessionHistory> SessionClient::Load(const std::string& session_id) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMicroseconds(timeout_));
  v1::GetSessionRequest req;
  req.set_session_id(session_id);
  v1::Session s;
  const grpc::Status st = For(session_id).stub->GetSession(&ctx, req, &s);
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
  const grpc::Status st = For(session_id).stub->PutSession(&ctx, req, &s);
  if (!st.ok()) return FromGrpcStatus(st);
  return s.version();
}

}  // namespace moemesh
