#include "services/common/health_check.h"

#include <cstdint>
#include <future>
#include <string>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "services/common/grpc_status.h"

namespace moemesh {
namespace {

void PutVarint(uint64_t v, std::string* out) {
  for (; v >= 0x80; v >>= 7) out->push_back(static_cast<char>((v & 0x7f) | 0x80));
  out->push_back(static_cast<char>(v));
}

}  // namespace

absl::StatusOr<bool> CheckHealth(const std::shared_ptr<grpc::Channel>& channel, absl::string_view service,
                                 absl::Duration timeout) {
  // HealthCheckRequest{string service = 1}.
  std::string request;
  if (!service.empty()) {
    request.push_back(0x0a);
    PutVarint(service.size(), &request);
    request.append(service.data(), service.size());
  }
  grpc::GenericStub stub(channel);
  grpc::Slice slice(request);
  grpc::ByteBuffer in(&slice, 1), out;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMicroseconds(timeout));
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &in, &out,
                 [&done](grpc::Status st) { done.set_value(st); });
  const grpc::Status st = done.get_future().get();
  if (!st.ok()) return FromGrpcStatus(st);
  // HealthCheckResponse{ServingStatus status = 1}: SERVING is 1; an
  // absent field is UNKNOWN (0).
  std::vector<grpc::Slice> slices;
  if (!out.Dump(&slices).ok()) return absl::InternalError("an unreadable health answer");
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  if (bytes.empty()) return false;
  if (bytes.size() != 2 || bytes[0] != 0x08) {
    return absl::InternalError(absl::StrCat("a health answer of ", bytes.size(), " bytes that is not a status"));
  }
  return bytes[1] == 1;
}

}  // namespace moemesh
