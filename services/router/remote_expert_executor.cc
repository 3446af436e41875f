#include "services/router/remote_expert_executor.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "moemesh/v1/expert.grpc.pb.h"
#include "services/common/frame_socket.h"
#include "services/common/grpc_status.h"
#include "services/common/server_util.h"
#include "services/common/tensor_proto.h"

namespace moemesh {

// One expert worker and our channel to it: the raw data channel when the
// worker offers one (and it is allowed), else the gRPC Dispatch stream.
struct RemoteExpertExecutor::Replica {
  std::string address;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::ExpertService::Stub> stub;
  std::unique_ptr<grpc::ClientContext> context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::DispatchRequest, v1::DispatchResponse>> stream;
  std::string data_host;  // empty: no data channel
  int data_port = 0;
  std::unique_ptr<FrameSocket> frames;
  v1::DispatchRequest full;   // the gRPC path's request, tensor bytes included
  std::vector<char> payload;  // the data channel's last answer
  bool pending = false;       // a request was written and its answer not read

  // Drops the current stream or connection, whatever state it is in.
  void Close() {
    frames.reset();
    if (stream) {
      context->TryCancel();
      stream->Finish();
      stream.reset();
    }
    pending = false;
  }

  void Open() {
    Close();
    if (!data_host.empty()) return;  // connects on the next Send
    context = std::make_unique<grpc::ClientContext>();
    stream = stub->Dispatch(context.get());
  }

  absl::Status Unavailable() const {
    return absl::UnavailableError(absl::StrCat("expert worker ", address, " closed its stream"));
  }

  // Sends `header` with the hidden states gathered from `rows` (each
  // hidden_size floats): by writev straight from the engine's buffer on the
  // data channel, by one copy into the message on the gRPC stream.
  absl::Status Send(const v1::DispatchRequest& header, absl::Span<const iovec> rows) {
    if (!data_host.empty()) {
      if (!frames) {
        auto f = FrameSocket::Connect(data_host, data_port);
        if (!f.ok()) return absl::UnavailableError(absl::StrCat("expert worker ", address, ": ", f.status().message()));
        frames = std::move(*f);
      }
      if (!frames->Send(header, rows).ok()) return Unavailable();
      pending = true;
      return absl::OkStatus();
    }
    if (!stream) Open();
    full = header;
    size_t bytes = 0;
    for (const iovec& v : rows) bytes += v.iov_len;
    std::string* data = full.mutable_hidden_states()->mutable_data();
    data->resize(bytes);
    char* p = data->data();
    for (const iovec& v : rows) {
      std::memcpy(p, v.iov_base, v.iov_len);
      p += v.iov_len;
    }
    if (!stream || !stream->Write(full)) return Unavailable();
    pending = true;
    return absl::OkStatus();
  }

  // Receives the answer; `*outputs` stays valid until the next Receive.
  absl::Status Receive(v1::DispatchResponse* resp, int hidden_size, F32Matrix* outputs) {
    pending = false;
    if (frames) {
      if (!frames->Receive(resp, &payload).ok()) return Unavailable();
    } else if (!stream || !stream->Read(resp)) {
      return Unavailable();
    }
    if (resp->error_code() != 0) {
      return absl::Status(static_cast<absl::StatusCode>(resp->error_code()),
                          absl::StrCat("expert worker ", address, ": ", resp->error_message()));
    }
    auto m = frames ? GetF32Matrix(resp->outputs(), payload.data(), payload.size(), hidden_size, "outputs")
                    : GetF32Matrix(resp->outputs(), hidden_size, "outputs");
    if (!m.ok()) return absl::InternalError(absl::StrCat("expert worker ", address, ": ", m.status().message()));
    *outputs = *m;
    return absl::OkStatus();
  }
};

// A shard: its replicas and this step's request.
struct RemoteExpertExecutor::Shard {
  std::vector<std::unique_ptr<Replica>> replicas;
  size_t next = 0;          // round-robin position
  Replica* chosen = nullptr;
  std::vector<int> tokens;  // local row -> batch token
  std::map<int, std::vector<std::pair<int, float>>> groups;  // expert -> (local row, weight)
  v1::DispatchRequest request;  // header: the hidden states' shape, no bytes
  std::vector<iovec> rows;      // the hidden states, in the engine's buffer
  v1::DispatchResponse response;
  F32Matrix outputs;
};

RemoteExpertExecutor::~RemoteExpertExecutor() {
  for (auto& s : shards_) {
    for (auto& r : s->replicas) r->Close();
  }
}

absl::StatusOr<std::vector<std::vector<std::string>>> RemoteExpertExecutor::ParseAddresses(const std::string& spec) {
  std::vector<std::vector<std::string>> shards;
  for (absl::string_view shard : absl::StrSplit(spec, ',')) {
    std::vector<std::string> replicas;
    for (absl::string_view r : absl::StrSplit(shard, '|', absl::SkipWhitespace())) replicas.emplace_back(r);
    if (replicas.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--experts \"", spec, "\": shard ", shards.size(), " has no address (use host:port, '|' between replicas, ',' between shards)"));
    }
    shards.push_back(std::move(replicas));
  }
  return shards;
}

absl::StatusOr<std::unique_ptr<RemoteExpertExecutor>> RemoteExpertExecutor::Connect(
    const std::vector<std::string>& shard_addresses, int hidden_size, int connect_timeout_ms) {
  std::vector<std::vector<std::string>> shards;
  for (const std::string& a : shard_addresses) shards.push_back({a});
  return Connect(shards, hidden_size, connect_timeout_ms);
}

absl::StatusOr<std::unique_ptr<RemoteExpertExecutor>> RemoteExpertExecutor::Connect(
    const std::vector<std::vector<std::string>>& shards, int hidden_size, int connect_timeout_ms,
    const ShardPlacement* placement, bool use_data_channel) {
  if (shards.empty()) return absl::InvalidArgumentError("no expert worker addresses");
  if (placement != nullptr && placement->num_shards() != static_cast<int>(shards.size())) {
    return absl::InvalidArgumentError(absl::StrCat("the placement has ", placement->num_shards(),
                                                   " shards but --experts lists ", shards.size()));
  }
  std::unique_ptr<RemoteExpertExecutor> ex(new RemoteExpertExecutor);
  ex->hidden_size_ = hidden_size;
  ex->placement_ = placement ? std::make_unique<ShardPlacement>(*placement)
                             : std::make_unique<ShardPlacement>(static_cast<int>(shards.size()));
  for (size_t i = 0; i < shards.size(); ++i) {
    auto shard = std::make_unique<Shard>();
    for (const std::string& address : shards[i]) {
      auto r = std::make_unique<Replica>();
      r->address = address;
      r->channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), ClientChannelArguments());
      r->stub = v1::ExpertService::NewStub(r->channel);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(connect_timeout_ms));
      ctx.set_wait_for_ready(true);
      v1::ShardInfo info;
      grpc::Status st = r->stub->GetShardInfo(&ctx, v1::GetShardInfoRequest(), &info);
      if (!st.ok()) {
        return absl::UnavailableError(
            absl::StrCat("expert worker ", address, " (shard ", i, ") is not reachable: ", st.error_message()));
      }
      if (info.shard_index() != static_cast<int>(i) || info.num_shards() != static_cast<int>(shards.size()) ||
          info.hidden_size() != hidden_size) {
        return absl::FailedPreconditionError(absl::StrCat(
            "expert worker ", address, " serves shard ", info.shard_index(), " of ", info.num_shards(),
            " with hidden size ", info.hidden_size(), "; expected shard ", i, " of ", shards.size(),
            " with hidden size ", hidden_size));
      }
      // The worker must hold exactly its shard's experts of every layer.
      std::map<int, std::vector<int>> held;
      for (const v1::LayerExperts& le : info.experts()) held[le.layer()].assign(le.experts().begin(), le.experts().end());
      for (int l = 0; l < info.num_layers(); ++l) {
        auto it = held.find(l);
        std::vector<int> have = it == held.end() ? std::vector<int>() : it->second;
        if (have.empty()) continue;  // a dense layer, or nothing of this shard
        std::vector<int> want = ex->placement_->ExpertsOf(static_cast<int>(i), l, info.num_experts());
        if (have != want) {
          return absl::FailedPreconditionError(absl::StrCat(
              "expert worker ", address, " holds experts [", absl::StrJoin(have, ","), "] of layer ", l,
              " but the placement gives shard ", i, " [", absl::StrJoin(want, ","),
              "]; start the workers and the router with the same placement"));
        }
      }
      if (use_data_channel && info.data_port() > 0) {
        // The data channel is on the worker's host, at the port it advertises.
        size_t colon = address.rfind(':');
        std::string host = colon == std::string::npos ? std::string() : address.substr(0, colon);
        if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
        if (!host.empty() && host.find('/') == std::string::npos) {
          r->data_host = host;
          r->data_port = info.data_port();
        }
      }
      r->Open();
      shard->replicas.push_back(std::move(r));
    }
    ex->shards_.push_back(std::move(shard));
  }
  return ex;
}

absl::Status RemoteExpertExecutor::Execute(const ExpertBatch& b, float* out) {
  absl::Status st = ExecuteOnce(b, out);
  if (!st.ok()) {
    // A failed step can leave answers unread: start those streams afresh so
    // the next step is not answered with stale rows.
    for (auto& s : shards_) {
      for (auto& r : s->replicas) {
        if (r->pending) r->Open();
      }
    }
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
  for (size_t si = 0; si < shards_.size(); ++si) {
    Shard& s = *shards_[si];
    s.tokens.clear();
    s.groups.clear();
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
  // Build and send every shard's request, then collect: all shards run at
  // once. A replica that fails is replaced by the next one of its shard.
  for (auto& sp : shards_) {
    Shard& s = *sp;
    s.chosen = nullptr;
    if (s.tokens.empty()) continue;
    v1::DispatchRequest& req = s.request;
    req.Clear();
    req.set_step(step_);
    req.set_layer(b.layer);
    SetF32Shape(static_cast<int64_t>(s.tokens.size()), h, req.mutable_hidden_states());
    s.rows.clear();
    for (int t : s.tokens) {
      s.rows.push_back({const_cast<float*>(b.hidden_states) + static_cast<size_t>(t) * h, h * sizeof(float)});
    }
    for (const auto& [e, assigned] : s.groups) {
      v1::ExpertRows* g = req.add_groups();
      g->set_expert(e);
      for (const auto& [row, w] : assigned) {
        g->add_rows(row);
        g->add_weights(w);
      }
    }
  }
  // Each shard tries its replicas in round-robin order, starting with a
  // new one every step.
  auto try_replicas = [&](Shard& s, bool already_sent) -> absl::Status {
    absl::Status last;
    const size_t n = s.replicas.size();
    for (size_t attempt = 0; attempt < n; ++attempt) {
      Replica* r = s.replicas[(s.next + attempt) % n].get();
      if (attempt > 0 || !already_sent) {
        if (attempt > 0) ++retries_;
        last = r->Send(s.request, s.rows);
        if (!last.ok()) {
          r->Open();
          continue;
        }
      }
      last = r->Receive(&s.response, h, &s.outputs);
      if (last.ok()) {
        s.chosen = r;
        return absl::OkStatus();
      }
      // Only a lost worker is worth another replica; a refused request
      // would be refused everywhere.
      r->Open();
      if (!absl::IsUnavailable(last) && !absl::IsCancelled(last)) return last;
    }
    return last;
  };
  std::vector<bool> sent(shards_.size(), false);
  const auto sent_at = std::chrono::steady_clock::now();
  for (size_t si = 0; si < shards_.size(); ++si) {
    Shard& s = *shards_[si];
    if (s.tokens.empty()) continue;
    Replica* first = s.replicas[s.next % s.replicas.size()].get();
    sent[si] = first->Send(s.request, s.rows).ok();
    if (!sent[si]) first->Open();
  }
  std::vector<std::vector<std::pair<int, const float*>>> parts(b.num_tokens);
  for (size_t si = 0; si < shards_.size(); ++si) {
    Shard& s = *shards_[si];
    if (s.tokens.empty()) continue;
    if (!sent[si]) {  // its first replica already failed: go to the next
      ++s.next;
      ++retries_;
    }
    absl::Status st = try_replicas(s, sent[si]);
    s.next = (s.next + 1) % s.replicas.size();
    if (!st.ok()) return st;
    if (observer_) {
      observer_(s.chosen->address,
                std::chrono::duration<double>(std::chrono::steady_clock::now() - sent_at).count());
    }
    if (s.response.step() != step_ || s.response.layer() != b.layer) {
      return absl::InternalError(absl::StrCat("expert worker ", s.chosen->address, " answered step ",
                                              s.response.step(), " layer ", s.response.layer(), ", expected step ",
                                              step_, " layer ", b.layer));
    }
    size_t total = 0;
    for (const auto& [e, assigned] : s.groups) total += assigned.size();
    const F32Matrix& m = s.outputs;
    if (static_cast<size_t>(m.rows) != total) {
      return absl::InternalError(
          absl::StrCat("expert worker ", s.chosen->address, " returned ", m.rows, " rows, expected ", total));
    }
    const float* row = m.data;
    for (const auto& [e, assigned] : s.groups) {
      for (const auto& [local_row, w] : assigned) {
        parts[s.tokens[local_row]].push_back({e, row});
        row += h;
      }
    }
  }
  const auto combine_start = std::chrono::steady_clock::now();
  for (int t = 0; t < b.num_tokens; ++t) {
    float* o = out + static_cast<size_t>(t) * h;
    std::fill(o, o + h, 0.0f);
    auto& p = parts[t];
    std::sort(p.begin(), p.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
    for (const auto& [e, r] : p) {
      for (int d = 0; d < h; ++d) o[d] += r[d];
    }
  }
  combine_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - combine_start).count();
  return absl::OkStatus();
}

}  // namespace moemesh
