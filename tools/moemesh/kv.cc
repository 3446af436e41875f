#include "tools/moemesh/kv.h"

#include <chrono>
#include <memory>

#include <grpcpp/grpcpp.h>

#include "moemesh/v1/kvcache.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "services/common/grpc_status.h"
#include "services/common/server_util.h"
#include "services/common/tls.h"

namespace moemesh {
namespace {

std::unique_ptr<v1::KvCacheService::Stub> Connect(const ClientOptions& opt) {
  return v1::KvCacheService::NewStub(
      grpc::CreateCustomChannel(opt.target, MeshChannelCredentials(), ClientChannelArguments()));
}

void SetDeadline(const ClientOptions& opt, grpc::ClientContext* ctx) {
  if (opt.timeout_ms > 0) {
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(opt.timeout_ms));
  }
}

}  // namespace

absl::Status RunKvStats(const ClientOptions& opt, std::ostream& out) {
  grpc::ClientContext ctx;
  SetDeadline(opt, &ctx);
  v1::KvCacheStats s;
  grpc::Status st = Connect(opt)->GetStats(&ctx, v1::GetStatsRequest(), &s);
  if (!st.ok()) return FromGrpcStatus(st);
  out << nlohmann::json({{"blocks", s.blocks()},
                         {"block_bytes", s.block_bytes()},
                         {"capacity_bytes", s.capacity_bytes()},
                         {"sessions", s.sessions()},
                         {"evictions", s.evictions()},
                         {"corrupt_reads", s.corrupt_reads()}})
             .dump()
      << std::endl;
  return absl::OkStatus();
}

absl::Status RunKvSessions(const ClientOptions& opt, const std::string& start_after, int limit, std::ostream& out) {
  grpc::ClientContext ctx;
  SetDeadline(opt, &ctx);
  v1::ListSessionsRequest req;
  req.set_start_after(start_after);
  req.set_limit(limit);
  v1::ListSessionsResponse resp;
  grpc::Status st = Connect(opt)->ListSessions(&ctx, req, &resp);
  if (!st.ok()) return FromGrpcStatus(st);
  for (const v1::Session& s : resp.sessions()) {
    // Session ids come from clients: replace what is not UTF-8 rather than throw.
    out << nlohmann::json({{"session_id", s.session_id()},
                           {"tokens", s.token_count()},
                           {"version", s.version()},
                           {"updated_unix_ms", s.updated_unix_ms()}})
               .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
        << std::endl;
  }
  return absl::OkStatus();
}

absl::Status RunKvDeleteSession(const ClientOptions& opt, const std::string& session_id, std::ostream& out) {
  if (session_id.empty()) return absl::InvalidArgumentError("--session-id ID is required");
  grpc::ClientContext ctx;
  SetDeadline(opt, &ctx);
  v1::DeleteSessionRequest req;
  req.set_session_id(session_id);
  v1::DeleteSessionResponse resp;
  grpc::Status st = Connect(opt)->DeleteSession(&ctx, req, &resp);
  if (!st.ok()) return FromGrpcStatus(st);
  out << nlohmann::json({{"deleted", session_id}}).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
      << std::endl;
  return absl::OkStatus();
}

}  // namespace moemesh
