#include "services/router/remote_expert_executor.h"

#include <algorithm>
#include <chrono>
#include <map>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "moemesh/v1/expert.grpc.pb.h"
#include "services/common/grpc_status.h"
#include "services/common/server_util.h"
#include "services/common/tensor_proto.h"

namespace moemesh {

struct RemoteExpertExecutor::Shard {
  std::string address;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::ExpertService::Stub> stub;
  std::unique_ptr<grpc::ClientContext> context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::DispatchRequest, v1::DispatchResponse>> stream;
  // This step's request: rows of the batch it carries, per expert.
  std::vector<int> tokens;  // local row -> batch token
  std::map<int, std::vector<std::pair<int, float>>> groups;  // expert -> (local row, weight)
  v1::DispatchResponse response;

  // Drops the current stream, whatever state it is in.
  void Close() {
    if (!stream) return;
    context->TryCancel();
    stream->Finish();
    stream.reset();
  }

  absl::Status Open() {
    Close();
    context = std::make_unique<grpc::ClientContext>();
    stream = stub->Dispatch(context.get());
    if (stream == nullptr) return absl::UnavailableError(absl::StrCat("cannot open a stream to ", address));
    return absl::OkStatus();
  }
};

RemoteExpertExecutor::~RemoteExpertExecutor() {
  for (auto& s : shards_) s->Close();
}

absl::StatusOr<std::unique_ptr<RemoteExpertExecutor>> RemoteExpertExecutor::Connect(
    const std::vector<std::string>& shard_addresses, int hidden_size, int connect_timeout_ms) {
  if (shard_addresses.empty()) return absl::InvalidArgumentError("no expert worker addresses");
  std::unique_ptr<RemoteExpertExecutor> ex(new RemoteExpertExecutor);
  ex->hidden_size_ = hidden_size;
  ex->placement_ = std::make_unique<ShardPlacement>(static_cast<int>(shard_addresses.size()));
  for (size_t i = 0; i < shard_addresses.size(); ++i) {
    auto shard = std::make_unique<Shard>();
    shard->address = shard_addresses[i];
    shard->channel = grpc::CreateCustomChannel(shard->address, grpc::InsecureChannelCredentials(),
                                               ClientChannelArguments());
    shard->stub = v1::ExpertService::NewStub(shard->channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(connect_timeout_ms));
    ctx.set_wait_for_ready(true);
    v1::ShardInfo info;
    grpc::Status st = shard->stub->GetShardInfo(&ctx, v1::GetShardInfoRequest(), &info);
    if (!st.ok()) {
      return absl::UnavailableError(
          absl::StrCat("expert worker ", shard->address, " (shard ", i, ") is not reachable: ", st.error_message()));
    }
    if (info.shard_index() != static_cast<int>(i) || info.num_shards() != static_cast<int>(shard_addresses.size()) ||
        info.hidden_size() != hidden_size) {
      return absl::FailedPreconditionError(absl::StrCat(
          "expert worker ", shard->address, " serves shard ", info.shard_index(), " of ", info.num_shards(),
          " with hidden size ", info.hidden_size(), "; expected shard ", i, " of ", shard_addresses.size(),
          " with hidden size ", hidden_size));
    }
    if (absl::Status open = shard->Open(); !open.ok()) return open;
    ex->shards_.push_back(std::move(shard));
  }
  return ex;
}

absl::Status RemoteExpertExecutor::Execute(const ExpertBatch& b, float* out) {
  absl::Status st = ExecuteOnce(b, out);
  if (!st.ok()) {
    // A failed step leaves streams with unsent or unread messages: start
    // every stream afresh so the next step is not answered with stale rows.
    for (auto& s : shards_) s->Open().IgnoreError();
  }
  return st;
}

absl::Status RemoteExpertExecutor::ExecuteOnce(const ExpertBatch& b, float* out) {
  const int h = b.hidden_size;
  if (h != hidden_size_) {
    return absl::InvalidArgumentError(absl::StrCat("hidden size ", h, " != ", hidden_size_));
  }
  ++step_;
  // Partition the assignments by shard; each shard gets only the rows it needs.
  std::vector<int> local(b.num_tokens);
  for (auto& s : shards_) {
    s->tokens.clear();
    s->groups.clear();
  }
  for (size_t si = 0; si < shards_.size(); ++si) {
    Shard& s = *shards_[si];
    std::fill(local.begin(), local.end(), -1);
    for (int t = 0; t < b.num_tokens; ++t) {
      for (int j = 0; j < b.slots; ++j) {
        int e = b.expert_ids[t * b.slots + j];
        if (e < 0 || placement_->ShardOf(b.layer, e) != static_cast<int>(si)) continue;
        if (local[t] < 0) {
          local[t] = static_cast<int>(s.tokens.size());
          s.tokens.push_back(t);
        }
        s.groups[e].push_back({local[t], b.weights[t * b.slots + j]});
      }
    }
  }
  // Send to every shard with work, then collect: all shards run at once.
  std::vector<float> rows;
  for (auto& sp : shards_) {
    Shard& s = *sp;
    if (s.tokens.empty()) continue;
    v1::DispatchRequest req;
    req.set_step(step_);
    req.set_layer(b.layer);
    rows.resize(s.tokens.size() * static_cast<size_t>(h));
    for (size_t i = 0; i < s.tokens.size(); ++i) {
      std::copy(b.hidden_states + static_cast<size_t>(s.tokens[i]) * h,
                b.hidden_states + static_cast<size_t>(s.tokens[i] + 1) * h, rows.data() + i * h);
    }
    SetF32Tensor(rows.data(), static_cast<int64_t>(s.tokens.size()), h, req.mutable_hidden_states());
    for (const auto& [e, assigned] : s.groups) {
      v1::ExpertRows* g = req.add_groups();
      g->set_expert(e);
      for (const auto& [row, w] : assigned) {
        g->add_rows(row);
        g->add_weights(w);
      }
    }
    if (!s.stream->Write(req)) {
      return absl::UnavailableError(absl::StrCat("expert worker ", s.address, " closed its stream"));
    }
  }
  // Per token: (expert, pointer to its weighted row) from every shard.
  std::vector<std::vector<std::pair<int, const float*>>> parts(b.num_tokens);
  for (auto& sp : shards_) {
    Shard& s = *sp;
    if (s.tokens.empty()) continue;
    if (!s.stream->Read(&s.response)) {
      return absl::UnavailableError(absl::StrCat("expert worker ", s.address, " closed its stream"));
    }
    if (s.response.error_code() != 0) {
      return absl::Status(static_cast<absl::StatusCode>(s.response.error_code()),
                          absl::StrCat("expert worker ", s.address, ": ", s.response.error_message()));
    }
    if (s.response.step() != step_ || s.response.layer() != b.layer) {
      return absl::InternalError(absl::StrCat("expert worker ", s.address, " answered step ", s.response.step(),
                                              " layer ", s.response.layer(), ", expected step ", step_, " layer ",
                                              b.layer));
    }
    size_t total = 0;
    for (const auto& [e, assigned] : s.groups) total += assigned.size();
    auto m = GetF32Matrix(s.response.outputs(), h, "outputs");
    if (!m.ok()) return m.status();
    if (static_cast<size_t>(m->rows) != total) {
      return absl::InternalError(absl::StrCat("expert worker ", s.address, " returned ", m->rows, " rows, expected ", total));
    }
    const float* row = m->data;
    for (const auto& [e, assigned] : s.groups) {
      for (const auto& [local_row, w] : assigned) {
        parts[s.tokens[local_row]].push_back({e, row});
        row += h;
      }
    }
  }
  for (int t = 0; t < b.num_tokens; ++t) {
    float* o = out + static_cast<size_t>(t) * h;
    std::fill(o, o + h, 0.0f);
    auto& p = parts[t];
    std::sort(p.begin(), p.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
    for (const auto& [e, r] : p) {
      for (int d = 0; d < h; ++d) o[d] += r[d];
    }
  }
  return absl::OkStatus();
}

}  // namespace moemesh
