#include "services/expert_client/remote_expert_executor.h"

#include <poll.h>

#include <algorithm>
#include <chrono>
#include <map>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "moemesh/v1/expert.grpc.pb.h"
#include "core/common/status_macros.h"
#include "core/quant/fp8_rows.h"
#include "core/tensor/dtype.h"
#include "services/common/server_util.h"
#include "services/common/tensor_proto.h"
#include "services/expert_client/expert_transport.h"
#include "services/common/address_source.h"
#include "services/common/tls.h"

namespace moemesh {

// One expert worker and a transport to it per lane, made afresh after a
// failure.
struct RemoteExpertExecutor::Replica {
  std::string address;
  NegotiatedTransport negotiated;
  NegotiatedTransport host;  // the transport without cuda-ipc (Options::device_rows)
  std::unique_ptr<ExpertTransport> transport[kLanes];
  bool pending[kLanes] = {};  // a request was sent and its answer not read
  // After a failure the replica is passed over until then; the first
  // request after it is its probe.
  std::chrono::steady_clock::time_point ejected_until{};

  // Drops a lane's transport, whatever state it is in; the next Send makes
  // a new one. Answers it still owes (a counter's) are read first: where
  // they cannot be, rows the step already used may be wrong (`spoiled`).
  void Reset(int lane) {
    if (transport[lane] && transport[lane]->defers_answers() && !transport[lane]->Settle().ok()) spoiled = true;
    transport[lane].reset();
    pending[lane] = false;
  }
  bool spoiled = false;  // until the executor's Settle reports it
  void ResetAll() {
    for (int l = 0; l < kLanes; ++l) Reset(l);
  }
  // ExpertTransport::answer_fd of a lane that awaits an answer; else -1.
  int answer_fd(int lane) const { return pending[lane] && transport[lane] ? transport[lane]->answer_fd() : -1; }

  // With `device`, the rows are that batch's, in GPU memory.
  absl::Status Send(int lane, const v1::DispatchRequest& request, absl::Span<const iovec> rows,
                    const ExpertBatch* device) {
    std::unique_ptr<ExpertTransport>& t = transport[lane];
    if (!t) t = negotiated.make();
    if (absl::Status st = device ? t->SendOnDevice(request, *device) : t->Send(request, rows);
        !st.ok()) {
      // A lost worker is UNAVAILABLE (try another); a request this side or
      // the worker's set-up refuses keeps its code.
      const bool lost = absl::IsUnavailable(st) || absl::IsCancelled(st) || absl::IsDeadlineExceeded(st);
      return absl::Status(lost ? absl::StatusCode::kUnavailable : st.code(),
                          absl::StrCat("expert worker ", address, ": ", st.message()));
    }
    pending[lane] = true;
    return absl::OkStatus();
  }

  // The answer, with the worker's own error as the status; with
  // `device_out`, its rows are copied there on `stream`.
  absl::Status Receive(int lane, v1::DispatchResponse* response, F32Matrix* outputs, float* device_out,
                       void* stream) {
    pending[lane] = false;
    ExpertTransport* t = transport[lane].get();
    if (t == nullptr) return absl::UnavailableError(absl::StrCat("expert worker ", address, ": not connected"));
    if (absl::Status st = device_out ? t->ReceiveOnDevice(response, outputs, device_out, stream)
                                     : t->Receive(response, outputs);
        !st.ok()) {
      return absl::Status(st.code(), absl::StrCat("expert worker ", address, ": ", st.message()));
    }
    if (response->error_code() != 0) {
      return absl::Status(static_cast<absl::StatusCode>(response->error_code()),
                          absl::StrCat("expert worker ", address, ": ", response->error_message()));
    }
    return absl::OkStatus();
  }
};

// A shard: its replicas, and its part of the batch away in each lane.
struct RemoteExpertExecutor::Shard {
  std::vector<std::unique_ptr<Replica>> replicas;
  // Where the replicas are found again and again (null: a fixed list), the
  // addresses it gave (replicas, and those on their way), and the changes
  // the resolver made ready for the step thread to take (AdoptChanges).
  // known and changes are guarded by changes_mu_.
  std::unique_ptr<AddressSource> source;
  std::vector<std::string> known;
  struct Changes {
    std::vector<std::unique_ptr<Replica>> added;
    std::vector<std::string> removed;
  };
  Changes changes;
  Rows wire = Rows::kF32;  // the rows' dtype on the wire: kF32, kBf16 or kFp8
  Answers answers = Answers::kF32;
  bool exact_bf16 = false;  // its workers round rows to bf16 themselves
  std::string tag;          // its workers' ShardInfo.results_tag, the same for each
  size_t next = 0;         // round-robin position
  struct Work {
    std::vector<uint16_t> bf16;   // the rows in bf16
    std::vector<uint8_t> codes;   // or in FP8 codes
    std::vector<float> scales;    // with each row's group scales
    size_t sent_to = 0;            // the replica the request went to first
    bool sent = false;             // and it took it
    Replica* chosen = nullptr;     // the replica that answered
    std::vector<int> groups;       // the groups (indices into the lane's work.groups) it holds
    std::vector<int> tokens;       // local row -> batch token
    size_t rows_out = 0;           // rows it must return
    v1::DispatchRequest request;   // header: the hidden states' shape, no bytes
    std::vector<iovec> rows;       // the hidden states, in the engine's buffer
    v1::DispatchResponse response;
    F32Matrix outputs;
    // Device mode: the lane's batch (rows in GPU memory) and where its
    // combined rows go; null otherwise.
    const ExpertBatch* device_batch = nullptr;
    float* device_out = nullptr;
  };
  Work lane[kLanes];
};

// A batch away: from Start to Finish.
struct RemoteExpertExecutor::Lane {
  bool busy = false;
  ExpertBatch batch;
  float* out = nullptr;
  uint64_t step = 0;
  bool combined = false;  // the workers add the rows
  ExpertWork work;        // the rows by expert (host mode), reused
  std::chrono::steady_clock::time_point sent_at;
};


std::string RemoteExpertExecutor::ResultsTag() const {
  std::vector<std::string> shards;
  for (size_t i = 0; i < shards_.size(); ++i) {
    const Shard& s = *shards_[i];
    std::vector<std::string> parts;
    if (!s.tag.empty()) parts.push_back(s.tag);
    if (s.wire == Rows::kFp8) parts.push_back("rows=fp8");
    if (s.wire == Rows::kBf16 && !s.exact_bf16) parts.push_back("rows=bf16");
    if (s.answers == Answers::kBf16) parts.push_back("answers=bf16");
    if (!parts.empty()) shards.push_back(absl::StrCat("shard ", i, ": ", absl::StrJoin(parts, " ")));
  }
  return absl::StrJoin(shards, "; ");
}

std::vector<RemoteExpertExecutor::Answers> RemoteExpertExecutor::answer_types() const {
  std::vector<Answers> out;
  for (const auto& s : shards_) out.push_back(s->answers);
  return out;
}

absl::StatusOr<RemoteExpertExecutor::Answers> RemoteExpertExecutor::ParseAnswers(const std::string& value) {
  if (value == "f32") return Answers::kF32;
  if (value == "bf16") return Answers::kBf16;
  return absl::InvalidArgumentError(absl::StrCat("--expert-answers ", value, ": expected f32 or bf16"));
}

std::vector<RemoteExpertExecutor::Rows> RemoteExpertExecutor::row_types() const {
  std::vector<Rows> out;
  for (const auto& s : shards_) out.push_back(s->wire);
  return out;
}

absl::StatusOr<RemoteExpertExecutor::Rows> RemoteExpertExecutor::ParseRows(const std::string& value) {
  if (value == "auto") return Rows::kAuto;
  if (value == "f32") return Rows::kF32;
  if (value == "bf16") return Rows::kBf16;
  if (value == "fp8") return Rows::kFp8;
  return absl::InvalidArgumentError(absl::StrCat("--expert-rows ", value, ": expected auto, f32, bf16 or fp8"));
}

absl::StatusOr<RemoteExpertExecutor::Combine> RemoteExpertExecutor::ParseCombine(const std::string& value) {
  if (value == "auto") return Combine::kAuto;
  if (value == "workers") return Combine::kWorkers;
  if (value == "router") return Combine::kRouter;
  return absl::InvalidArgumentError(absl::StrCat("--expert-combine ", value, ": expected auto, workers or router"));
}

std::vector<std::string> RemoteExpertExecutor::transports() const {
  std::vector<std::string> out;
  for (const auto& s : shards_) out.push_back(s->replicas.front()->negotiated.name);
  return out;
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
  Options options;
  options.connect_timeout_ms = connect_timeout_ms;
  return Connect(shards, hidden_size, options);
}

absl::StatusOr<std::unique_ptr<RemoteExpertExecutor>> RemoteExpertExecutor::Connect(
    const std::vector<std::vector<std::string>>& shards, int hidden_size) {
  return Connect(shards, hidden_size, Options());
}

absl::StatusOr<std::unique_ptr<RemoteExpertExecutor::Replica>> RemoteExpertExecutor::MakeReplica(
    const std::string& address, int shard, v1::ShardInfo* info) const {
  const Options& options = options_;
  auto r = std::make_unique<Replica>();
  r->address = address;
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(address, MeshChannelCredentials(), ClientChannelArguments());
  std::unique_ptr<v1::ExpertService::Stub> stub = v1::ExpertService::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(options.connect_timeout_ms));
  ctx.set_wait_for_ready(true);
  grpc::Status st = stub->GetShardInfo(&ctx, v1::GetShardInfoRequest(), info);
  if (!st.ok()) {
    return absl::UnavailableError(
        absl::StrCat("expert worker ", address, " (shard ", shard, ") is not reachable: ", st.error_message()));
  }
  const int shards = placement_->num_shards();
  if (info->shard_index() != shard || info->num_shards() != shards || info->hidden_size() != hidden_size_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "expert worker ", address, " serves shard ", info->shard_index(), " of ", info->num_shards(),
        " with hidden size ", info->hidden_size(), "; expected shard ", shard, " of ", shards, " with hidden size ",
        hidden_size_));
  }
  // The worker must hold exactly its shard's experts of every layer.
  std::map<int, std::vector<int>> held;
  for (const v1::LayerExperts& le : info->experts()) held[le.layer()].assign(le.experts().begin(), le.experts().end());
  for (int l = 0; l < info->num_layers(); ++l) {
    auto it = held.find(l);
    std::vector<int> have = it == held.end() ? std::vector<int>() : it->second;
    if (have.empty()) continue;  // a dense layer, or nothing of this shard
    std::vector<int> want = placement_->ExpertsOf(shard, l, info->num_experts());
    if (have != want) {
      return absl::FailedPreconditionError(absl::StrCat(
          "expert worker ", address, " holds experts [", absl::StrJoin(have, ","), "] of layer ", l,
          " but the placement gives shard ", shard, " [", absl::StrJoin(want, ","),
          "]; start the workers and the router with the same placement"));
    }
  }
  TransportOptions transport;
  transport.hidden_size = hidden_size_;
  transport.allow_data_channel = options.use_data_channel;
  transport.receive_timeout_ms = options.receive_timeout_ms;
  r->host = NegotiateTransport(address, *info, channel, transport);
  transport.device_rows = options.cuda_device >= 0 ? options.device_rows : nullptr;
  r->negotiated = transport.device_rows ? NegotiateTransport(address, *info, channel, transport) : r->host;
  return r;
}

absl::StatusOr<std::unique_ptr<RemoteExpertExecutor>> RemoteExpertExecutor::Connect(
    const std::vector<std::vector<std::string>>& shards, int hidden_size, const Options& options) {
  const ShardPlacement* placement = options.placement;
  if (shards.empty()) return absl::InvalidArgumentError("no expert worker addresses");
  for (size_t i = 0; i < shards.size(); ++i) {
    if (shards[i].empty()) return absl::InvalidArgumentError(absl::StrCat("shard ", i, " has no replica address"));
  }
  if (placement != nullptr && placement->num_shards() != static_cast<int>(shards.size())) {
    return absl::InvalidArgumentError(absl::StrCat("the placement has ", placement->num_shards(),
                                                   " shards but --experts lists ", shards.size()));
  }
  std::unique_ptr<RemoteExpertExecutor> ex(new RemoteExpertExecutor);
  ex->options_ = options;
  ex->options_.placement = nullptr;  // placement_ holds it
  ex->lanes_.resize(kLanes);
  ex->hidden_size_ = hidden_size;
  ex->eject_ms_ = options.eject_ms;
  ex->hedge_ms_ = std::max(0, options.hedge_ms);
  ex->receive_timeout_ms_ = options.receive_timeout_ms;
  ex->retry_tokens_ = ex->max_retry_tokens_ = std::max(0, options.retry_tokens);
  ex->placement_ = placement ? std::make_unique<ShardPlacement>(*placement)
                             : std::make_unique<ShardPlacement>(static_cast<int>(shards.size()));
  bool dynamic = false;
  for (size_t i = 0; i < shards.size(); ++i) {
    auto shard = std::make_unique<Shard>();
    std::vector<std::string> addresses = shards[i];
    if (addresses.size() == 1 && AddressSource::IsSource(addresses[0])) {
      MM_ASSIGN_OR_RETURN(shard->source, AddressSource::Parse(addresses[0]));
      absl::StatusOr<std::vector<std::string>> now = shard->source->Resolve();
      if (!now.ok() || now->empty()) {
        return absl::UnavailableError(absl::StrCat("expert shard ", i, " (", addresses[0], ") has no replica: ",
                                                   now.ok() ? "it names none" : now.status().message()));
      }
      addresses = std::move(*now);
      dynamic = true;
    } else {
      for (const std::string& a : addresses) {
        if (AddressSource::IsSource(a)) {
          return absl::InvalidArgumentError(absl::StrCat("shard ", i, ": ", a, " stands alone (no '|' beside it)"));
        }
      }
    }
    bool all_exact = true, all_fp8 = true, all_bf16_outputs = true;
    for (const std::string& address : addresses) {
      v1::ShardInfo info;
      MM_ASSIGN_OR_RETURN(std::unique_ptr<Replica> r, ex->MakeReplica(address, static_cast<int>(i), &info));
      // Any replica may answer any call: they must compute alike, and the
      // KV cache is named by how they do.
      if (shard->replicas.empty()) {
        shard->tag = info.results_tag();
      } else if (info.results_tag() != shard->tag) {
        return absl::FailedPreconditionError(absl::StrCat(
            "expert shard ", i, ": worker ", address, " computes as \"", info.results_tag(), "\" and ",
            shard->replicas[0]->address, " as \"", shard->tag,
            "\": a shard's replicas need the same --device, --quantize and --bf16-inputs"));
      }
      if (ex->layer_shard_.empty()) ex->layer_shard_.assign(info.num_layers(), -1);
      ex->num_experts_ = info.num_experts();
      all_exact = all_exact && info.bf16_rows_exact();
      all_fp8 = all_fp8 && info.fp8_rows();
      all_bf16_outputs = all_bf16_outputs && info.bf16_outputs();
      shard->replicas.push_back(std::move(r));
    }
    shard->exact_bf16 = all_exact;
    const Rows automatic = all_exact ? Rows::kBf16 : Rows::kF32;
    switch (options.rows) {
      case Rows::kAuto:
        shard->wire = automatic;
        break;
      case Rows::kFp8:
        shard->wire = all_fp8 ? Rows::kFp8 : automatic;
        if (!all_fp8 && options.warn) {
          options.warn(absl::StrCat("expert shard ", i, ": a worker does not take fp8 rows (an older moemesh-expert); ",
                                    "sending ", automatic == Rows::kBf16 ? "bf16" : "f32", " rows"));
        }
        break;
      default:
        shard->wire = options.rows;
    }
    if (options.answers == Answers::kBf16) {
      shard->answers = all_bf16_outputs ? Answers::kBf16 : Answers::kF32;
      if (!all_bf16_outputs && options.warn) {
        options.warn(absl::StrCat("expert shard ", i, ": a worker does not answer in bf16 (an older "
                                  "moemesh-expert); its answers come as f32"));
      }
    }
    shard->known = addresses;
    ex->shards_.push_back(std::move(shard));
  }
  ex->combine_ = options.combine;
  for (size_t l = 0; l < ex->layer_shard_.size(); ++l) {
    for (size_t i = 0; i < ex->shards_.size(); ++i) {
      const size_t held = ex->placement_->ExpertsOf(static_cast<int>(i), static_cast<int>(l), ex->num_experts_).size();
      if (held == 0) continue;
      const bool whole = ex->layer_shard_[l] == -1 && held == static_cast<size_t>(ex->num_experts_);
      ex->layer_shard_[l] = whole ? static_cast<int>(i) : -2;
      if (!whole) break;
    }
  }
  if (options.cuda_device >= 0) ex->EnterDeviceMode(options);
  if (dynamic) ex->resolver_ = std::thread([e = ex.get()] { e->ResolveLoop(); });
  return ex;
}

void RemoteExpertExecutor::ResolveLoop() {
  const absl::Duration period = absl::Milliseconds(std::max(1, options_.resolve_period_ms));
  for (;;) {
    {
      absl::MutexLock lock(&changes_mu_);
      if (changes_mu_.AwaitWithTimeout(absl::Condition(&stop_resolving_), period)) return;
    }
    for (size_t i = 0; i < shards_.size(); ++i) {
      Shard& s = *shards_[i];
      if (!s.source) continue;
      absl::StatusOr<std::vector<std::string>> now = s.source->Resolve();
      if (!now.ok() || now->empty()) continue;  // a hiccup: keep the replicas there are
      std::vector<std::string> known;
      {
        absl::MutexLock lock(&changes_mu_);
        known = s.known;
      }
      Shard::Changes changes;
      for (const std::string& a : *now) {
        if (std::find(known.begin(), known.end(), a) != known.end()) continue;
        v1::ShardInfo info;
        absl::StatusOr<std::unique_ptr<Replica>> r = MakeReplica(a, static_cast<int>(i), &info);
        std::string why = r.ok() ? "" : std::string(r.status().message());
        if (r.ok() && s.wire == Rows::kBf16 && options_.rows != Rows::kBf16 && !info.bf16_rows_exact()) {
          why = absl::StrCat("expert worker ", a, " would not give f32 results for bf16 rows, as the shard's others do");
        }
        if (r.ok() && s.wire == Rows::kFp8 && !info.fp8_rows()) {
          why = absl::StrCat("expert worker ", a, " does not take fp8 rows, as the shard's others do");
        }
        if (r.ok() && s.answers == Answers::kBf16 && !info.bf16_outputs()) {
          why = absl::StrCat("expert worker ", a, " does not answer in bf16, as the shard's others do");
        }
        if (r.ok() && info.results_tag() != s.tag) {
          why = absl::StrCat("expert worker ", a, " computes as \"", info.results_tag(), "\", the shard's others as \"",
                             s.tag, "\" (--device, --quantize, --bf16-inputs)");
        }
        if (r.ok() && cuda_device_ >= 0 && (*r)->negotiated.name != "cuda-ipc") {
          why = absl::StrCat("expert worker ", a, " does not take cuda-ipc, as the shard's others do");
        }
        if (!why.empty()) {
          if (options_.warn) options_.warn(absl::StrCat("expert shard ", i, ": not using it: ", why));
          continue;
        }
        changes.added.push_back(std::move(*r));
      }
      for (const std::string& a : known) {
        if (!std::binary_search(now->begin(), now->end(), a)) changes.removed.push_back(a);
      }
      if (changes.added.empty() && changes.removed.empty()) continue;
      absl::MutexLock lock(&changes_mu_);
      for (auto& r : changes.added) s.known.push_back(r->address);
      for (const std::string& a : changes.removed) s.known.erase(std::find(s.known.begin(), s.known.end(), a));
      for (auto& r : changes.added) s.changes.added.push_back(std::move(r));
      for (std::string& a : changes.removed) s.changes.removed.push_back(std::move(a));
    }
  }
}

void RemoteExpertExecutor::AdoptChanges() {
  if (!resolver_.joinable()) return;
  for (const Lane& l : lanes_) {
    if (l.busy) return;  // replicas are indexed by the batches away: next time
  }
  absl::MutexLock lock(&changes_mu_);
  for (auto& sp : shards_) {
    Shard& s = *sp;
    for (auto& r : s.changes.added) s.replicas.push_back(std::move(r));
    for (const std::string& a : s.changes.removed) {
      auto it = std::find_if(s.replicas.begin(), s.replicas.end(), [&](const auto& r) { return r->address == a; });
      if (it == s.replicas.end()) continue;
      if (s.replicas.size() <= 1) {  // never none: kept, and asked about again
        s.known.push_back(a);
        continue;
      }
      (*it)->ResetAll();  // its answers owed read first
      spoiled_ = spoiled_ || (*it)->spoiled;
      s.replicas.erase(it);
    }
    s.changes = Shard::Changes();
    s.next %= s.replicas.size();
  }
}

std::vector<std::string> RemoteExpertExecutor::replicas(int shard) const {
  std::vector<std::string> out;
  for (const auto& r : shards_[shard]->replicas) out.push_back(r->address);
  return out;
}

RemoteExpertExecutor::~RemoteExpertExecutor() {
  if (resolver_.joinable()) {
    {
      absl::MutexLock lock(&changes_mu_);
      stop_resolving_ = true;
    }
    resolver_.join();
  }
}

void RemoteExpertExecutor::EnterDeviceMode(const Options& options) {
  size_t offered = 0, replicas = 0;
  for (const auto& s : shards_) {
    for (const auto& r : s->replicas) {
      offered += r->negotiated.name == "cuda-ipc";
      ++replicas;
    }
  }
  if (offered == 0) return;  // no GPU worker of this host: nothing to say
  // Every replica takes it, each MoE layer is whole on one shard (its worker
  // groups and combines it), and the workers may add the rows.
  std::string why;
  if (offered < replicas) {
    why = absl::StrCat("only ", offered, " of ", replicas, " expert workers offer cuda-ipc");
  } else if (std::find(layer_shard_.begin(), layer_shard_.end(), -2) != layer_shard_.end()) {
    why = "the experts of a layer are on several shards (each worker must hold whole layers)";
  } else if (combine_ == Combine::kRouter) {
    why = "--expert-combine router: over cuda-ipc the workers add the rows";
  }
  // Set the wire up now: where it cannot be (containers apart), the rows
  // go through the host.
  for (auto& s : shards_) {
    for (auto& r : s->replicas) {
      for (int l = 0; l < kLanes && why.empty(); ++l) {
        r->transport[l] = r->negotiated.make();
        if (absl::Status st = r->transport[l]->Warm(); !st.ok()) {
          why = absl::StrCat("expert worker ", r->address, ": it cannot be set up: ", st.message());
        }
      }
    }
  }
  if (why.empty()) {
    cuda_device_ = options.cuda_device;
    return;
  }
  if (options.warn) options.warn(absl::StrCat("cuda-ipc not used, the rows go through the host: ", why));
  for (auto& s : shards_) {
    for (auto& r : s->replicas) {
      r->ResetAll();
      r->negotiated = r->host;
    }
  }
}

absl::Status RemoteExpertExecutor::Execute(const ExpertBatch& b, float* out) {
  MM_RETURN_IF_ERROR(Start(b, out, 0));
  MM_RETURN_IF_ERROR(Finish(0));
  return Settle();
}

absl::Status RemoteExpertExecutor::Settle() {
  absl::Status first;
  if (spoiled_) {
    spoiled_ = false;
    first = absl::AbortedError("an expert worker dropped from the mesh owed answers for rows this step already "
                               "used: the step must run again");
  }
  for (auto& s : shards_) {
    for (auto& r : s->replicas) {
      for (int lane = 0; lane < kLanes; ++lane) {
        ExpertTransport* t = r->transport[lane].get();
        if (t == nullptr || !t->defers_answers()) continue;
        absl::Status st = t->Settle();
        if (st.ok()) continue;
        // A lost worker is failed (passed over, then probed) and the step
        // runs again; a refusal would be refused again: it is the error.
        const bool lost = absl::IsUnavailable(st) || absl::IsCancelled(st) || absl::IsDeadlineExceeded(st);
        if (lost) {
          Fail(r.get(), lane);
        } else {
          r->Reset(lane);
        }
        if (first.ok() || (absl::IsAborted(first) && !lost)) {
          first = lost ? absl::AbortedError(absl::StrCat("expert worker ", r->address,
                                                         " failed work whose rows were already used (", st.message(),
                                                         "): the step must run again"))
                       : absl::Status(st.code(), absl::StrCat("expert worker ", r->address, ": ", st.message()));
        }
      }
      if (r->spoiled) {
        r->spoiled = false;
        if (first.ok()) {
          first = absl::AbortedError(absl::StrCat("expert worker ", r->address, " was dropped owing answers for "
                                                  "rows this step already used: the step must run again"));
        }
      }
    }
  }
  return first;
}

absl::Status RemoteExpertExecutor::Start(const ExpertBatch& b, float* out, int lane) {
  if (lane < 0 || lane >= kLanes) {
    return absl::InvalidArgumentError(absl::StrCat("lane ", lane, " is not in [0, ", kLanes, ")"));
  }
  if (!recording_) AdoptChanges();  // the recording's replicas stay until it ends
  Lane& l = lanes_[lane];
  if (l.busy) Abandon(lane);  // started again without a Finish: its answers are stale
  absl::Status st = StartOnce(b, out, lane);
  if (!st.ok()) {
    Abandon(lane);
    return st;
  }
  l.busy = true;
  return st;
}

absl::Status RemoteExpertExecutor::Finish(int lane) {
  if (lane < 0 || lane >= kLanes || !lanes_[lane].busy) {
    return absl::FailedPreconditionError(absl::StrCat("Finish(", lane, ") without a Start"));
  }
  lanes_[lane].busy = false;
  absl::Status st = FinishOnce(lane);
  if (!st.ok()) Abandon(lane);
  return st;
}

void RemoteExpertExecutor::Abandon(int lane) {
  lanes_[lane].busy = false;
  if (recording_) {
    // Nothing was sent; the transports stay for EndRecording to end.
    record_failed_ = true;
    for (auto& s : shards_) {
      for (auto& r : s->replicas) r->pending[lane] = false;
    }
    return;
  }
  for (auto& s : shards_) {
    for (auto& r : s->replicas) {
      if (r->pending[lane]) r->Reset(lane);
    }
  }
}

void RemoteExpertExecutor::Partition(int lane) {
  const int h = hidden_size_;
  Lane& ln = lanes_[lane];
  const ExpertWork& work = ln.work;
  const int num_tokens = ln.batch.num_tokens;
  const int layer = work.layer;
  ln.combined = combine_ == Combine::kWorkers ||
                (combine_ == Combine::kAuto && layer < static_cast<int>(layer_shard_.size()) && layer_shard_[layer] >= 0);
  std::vector<int> local(num_tokens);
  for (size_t si = 0; si < shards_.size(); ++si) {
    Shard::Work& s = shards_[si]->lane[lane];
    const Rows wire = shards_[si]->wire;
    s.groups.clear();
    s.tokens.clear();
    s.rows.clear();
    s.rows_out = 0;
    s.chosen = nullptr;
    // The shard's rows: every token one of its groups needs, in token order.
    std::fill(local.begin(), local.end(), -1);
    for (size_t gi = 0; gi < work.groups.size(); ++gi) {
      const ExpertWork::Group& g = work.groups[gi];
      if (placement_->ShardOf(work.layer, g.expert) != static_cast<int>(si)) continue;
      s.groups.push_back(static_cast<int>(gi));
      s.rows_out += g.rows.size();
      for (int t : g.rows) local[t] = 0;
    }
    if (s.groups.empty()) continue;
    for (int t = 0; t < num_tokens; ++t) {
      if (local[t] < 0) continue;
      local[t] = static_cast<int>(s.tokens.size());
      s.tokens.push_back(t);
      if (wire == Rows::kF32) {  // written straight from the engine's buffer
        s.rows.push_back({const_cast<float*>(work.hidden_states) + static_cast<size_t>(t) * h, h * sizeof(float)});
      }
    }
    v1::DispatchRequest& req = s.request;
    req.Clear();
    req.set_step(ln.step);
    req.set_layer(work.layer);
    req.set_micro_batch(lane);
    req.set_combine(ln.combined);
    req.set_bf16_outputs(shards_[si]->answers == Answers::kBf16);
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    if (ln.combined) s.rows_out = s.tokens.size();
    if (wire == Rows::kBf16) {  // rounded into one buffer, then written from there
      s.bf16.resize(static_cast<size_t>(n) * h);
      for (int64_t i = 0; i < n; ++i) {
        F32ToBf16N(work.hidden_states + static_cast<size_t>(s.tokens[i]) * h, h, s.bf16.data() + i * h);
      }
      s.rows.push_back({s.bf16.data(), s.bf16.size() * sizeof(uint16_t)});
      SetBf16Shape(n, h, req.mutable_hidden_states());
    } else if (wire == Rows::kFp8) {  // codes into one buffer, the scales into the header
      const int groups = Fp8RowGroups(h);
      s.codes.resize(static_cast<size_t>(n) * h);
      s.scales.resize(static_cast<size_t>(n) * groups);
      for (int64_t i = 0; i < n; ++i) {
        QuantizeRowFp8(work.hidden_states + static_cast<size_t>(s.tokens[i]) * h, h, s.codes.data() + i * h,
                       s.scales.data() + i * groups);
      }
      s.rows.push_back({s.codes.data(), s.codes.size()});
      SetF8Shape(n, h, req.mutable_hidden_states());
      SetFp8Scales(s.scales.data(), n, h, req.mutable_hidden_scales());
    } else {
      SetF32Shape(n, h, req.mutable_hidden_states());
    }
    for (int gi : s.groups) {
      const ExpertWork::Group& g = work.groups[gi];
      v1::ExpertRows* rows = req.add_groups();
      rows->set_expert(g.expert);
      for (size_t i = 0; i < g.rows.size(); ++i) {
        rows->add_rows(local[g.rows[i]]);
        rows->add_weights(g.weights[i]);
      }
    }
  }
}

// The shard's next replica in turn (from s.next) that is not ejected; s.next
// when all are. No allocation: it runs for every shard of every layer.
size_t RemoteExpertExecutor::FirstLive(const Shard& s) const {
  const size_t n = s.replicas.size();
  const auto now = std::chrono::steady_clock::now();
  for (size_t k = 0; k < n; ++k) {
    const size_t i = (s.next + k) % n;
    if (s.replicas[i]->ejected_until <= now) return i;
  }
  return s.next;
}

// The shard's replicas after a failure: round robin from s.next, those not
// ejected first.
std::vector<size_t> RemoteExpertExecutor::Order(const Shard& s) const {
  const size_t n = s.replicas.size();
  const auto now = std::chrono::steady_clock::now();
  std::vector<size_t> healthy, ejected;
  for (size_t k = 0; k < n; ++k) {
    const size_t i = (s.next + k) % n;
    (s.replicas[i]->ejected_until > now ? ejected : healthy).push_back(i);
  }
  healthy.insert(healthy.end(), ejected.begin(), ejected.end());
  return healthy;
}

void RemoteExpertExecutor::Fail(Replica* r, int lane) {
  r->Reset(lane);
  r->ejected_until = std::chrono::steady_clock::now() + std::chrono::milliseconds(eject_ms_);
  retry_tokens_ = std::max(0.0, retry_tokens_ - 1);  // a failed call spends a token
}

absl::Status RemoteExpertExecutor::SendTo(Shard& s, int lane, Replica* r) {
  if (recording_) return RecordTo(s, lane, r);
  Shard::Work& w = s.lane[lane];
  absl::Status st = r->Send(lane, w.request, w.rows, w.device_batch);
  if (st.ok()) {
    if (w.device_batch == nullptr) {
      for (const iovec& v : w.rows) row_bytes_sent_ += static_cast<int64_t>(v.iov_len);
      row_bytes_sent_ += static_cast<int64_t>(w.request.hidden_scales().data().size());
    }
    return st;
  }
  if (absl::IsUnavailable(st)) {
    Fail(r, lane);
  } else {
    r->Reset(lane);  // refused, not lost: another replica would refuse it too
  }
  return st;
}

// Sends s's request to `r` (unless already sent) and reads the answer. A
// lost worker is failed (ejected); any other error ends the exchange.
absl::Status RemoteExpertExecutor::Attempt(Shard& s, int lane, Replica* r, bool send) {
  Shard::Work& w = s.lane[lane];
  if (send) MM_RETURN_IF_ERROR(SendTo(s, lane, r));
  absl::Status st = r->Receive(lane, &w.response, &w.outputs, w.device_out,
                               w.device_batch ? w.device_batch->cuda_stream : nullptr);
  if (recording_) {  // only GPU work was enqueued: nothing to fail over
    if (st.ok()) {
      w.chosen = r;
      return st;
    }
    record_failed_ = true;
    return absl::FailedPreconditionError(st.message());
  }
  if (st.ok()) {
    w.chosen = r;
    retry_tokens_ = std::min(max_retry_tokens_, retry_tokens_ + 0.1);
    if (w.device_batch == nullptr) {
      const int bytes = w.response.outputs().dtype() == v1::DTYPE_BF16 ? 2 : 4;
      answer_bytes_received_ += w.outputs.rows * w.outputs.cols * bytes;
    }
  } else if (absl::IsUnavailable(st) || absl::IsCancelled(st)) {
    Fail(r, lane);
  } else {
    r->Reset(lane);
  }
  return st;
}

absl::Status RemoteExpertExecutor::SendFirst(Shard& s, int lane) {
  Shard::Work& w = s.lane[lane];
  w.sent_to = FirstLive(s);
  s.next = (w.sent_to + 1) % s.replicas.size();
  const absl::Status st = SendTo(s, lane, s.replicas[w.sent_to].get());
  w.sent = st.ok();
  // Lost: Exchange tries the next replica; refused: the error.
  return st.ok() || absl::IsUnavailable(st) ? absl::OkStatus() : st;
}

size_t RemoteExpertExecutor::Hedge(Shard& s, int lane) {
  Shard::Work& w = s.lane[lane];
  Replica* first = s.replicas[w.sent_to].get();
  // An answer read later (cuda-ipc's counter) is not waited for here.
  if (first->transport[lane] && first->transport[lane]->defers_answers()) return w.sent_to;
  pollfd fds[2] = {{first->answer_fd(lane), POLLIN, 0}, {-1, POLLIN, 0}};
  if (hedge_ms_ <= 0 || s.replicas.size() < 2 || fds[0].fd < 0) return w.sent_to;
  if (poll(fds, 1, hedge_ms_) != 0) return w.sent_to;  // answered in time (or broke: Receive says)
  if (retry_tokens_ <= max_retry_tokens_ / 2) return w.sent_to;
  const auto now = std::chrono::steady_clock::now();
  size_t second = w.sent_to;
  for (size_t i : Order(s)) {
    if (i != w.sent_to && s.replicas[i]->ejected_until <= now) {
      second = i;
      break;
    }
  }
  if (second == w.sent_to) return w.sent_to;  // no other live replica
  Replica* other = s.replicas[second].get();
  if (!SendTo(s, lane, other).ok()) return w.sent_to;  // lost: ejected; refused: the first it is
  ++hedges_;
  fds[1].fd = other->answer_fd(lane);
  if (fds[1].fd < 0) {  // a transport that cannot tell: wait for the first after all
    other->Reset(lane);
    return w.sent_to;
  }
  const int left = receive_timeout_ms_ > 0 ? std::max(1, receive_timeout_ms_ - hedge_ms_) : -1;
  if (poll(fds, 2, left) <= 0 || fds[0].revents != 0) {
    other->Reset(lane);  // the first answered first (or neither did: its Receive times out)
    return w.sent_to;
  }
  // Its answer is not read (a fresh connection next time), and it is passed
  // over like a failed replica, without spending the retry budget: a slow
  // replica would otherwise cost a hedge at each of its turns.
  first->Reset(lane);
  first->ejected_until = std::chrono::steady_clock::now() + std::chrono::milliseconds(eject_ms_);
  return second;
}

absl::Status RemoteExpertExecutor::Exchange(Shard& s, int lane) {
  Shard::Work& w = s.lane[lane];
  // The common case: the request is out to w.sent_to, whose answer comes
  // (or, hedged, to another replica too, which answered first).
  absl::Status last;
  if (w.sent) {
    w.sent_to = Hedge(s, lane);
    last = Attempt(s, lane, s.replicas[w.sent_to].get(), /*send=*/false);
    if (last.ok()) return last;
  }
  // Only a lost worker is worth another replica; a refused request would be
  // refused everywhere.
  // Every send from here on is a retry: of the answer that did not come, or
  // of the first send, which failed.
  for (size_t i : Order(s)) {
    if (!last.ok() && !absl::IsUnavailable(last) && !absl::IsCancelled(last)) return last;
    if (w.sent && i == w.sent_to) continue;
    if (retry_tokens_ <= max_retry_tokens_ / 2) {
      return absl::UnavailableError(absl::StrCat(
          last.ok() ? "an expert worker is gone" : last.message(),
          "; not sent to another replica: the retry budget is spent (too many failed expert calls of late)"));
    }
    ++retries_;
    last = Attempt(s, lane, s.replicas[i].get(), /*send=*/true);
    if (last.ok()) return last;
  }
  return last;
}

absl::Status RemoteExpertExecutor::StartOnce(const ExpertBatch& b, float* out, int lane) {
  const int h = b.hidden_size;
  if (h != hidden_size_) {
    return absl::InvalidArgumentError(absl::StrCat("hidden size ", h, " != ", hidden_size_));
  }
  Lane& l = lanes_[lane];
  l.batch = b;
  l.out = out;
  l.step = ++step_;
  l.sent_at = std::chrono::steady_clock::now();
  if (b.on_device) {
    if (cuda_device_ < 0) return absl::InvalidArgumentError("remote experts take rows in host memory");
    return StartOnDevice(b, lane);
  }
  if (b.routing_on_device) return absl::InvalidArgumentError("routing on a GPU with rows in host memory");
  MM_RETURN_IF_ERROR(GroupByExpert(b, num_experts_, &l.work));
  Partition(lane);
  // Send every shard's request now; Finish collects: all shards run at once.
  for (auto& s : shards_) {
    Shard::Work& w = s->lane[lane];
    w.device_batch = nullptr;
    w.device_out = nullptr;
    if (w.groups.empty()) continue;
    MM_RETURN_IF_ERROR(SendFirst(*s, lane));
  }
  return absl::OkStatus();
}

absl::Status RemoteExpertExecutor::FinishOnce(int lane) {
  Lane& l = lanes_[lane];
  const ExpertBatch& b = l.batch;
  const int h = hidden_size_;
  float* out = l.out;
  std::vector<const float*> group_rows(b.on_device ? 0 : l.work.groups.size(), nullptr);
  for (auto& sp : shards_) {
    Shard& s = *sp;
    Shard::Work& w = s.lane[lane];
    if (!b.on_device && w.groups.empty()) continue;
    if (b.on_device && w.device_batch == nullptr) continue;  // not this layer's shard
    const absl::Status st = Exchange(s, lane);  // past a first replica that failed: the next
    w.device_batch = nullptr;
    w.device_out = nullptr;
    if (!st.ok()) return st;
    if (observer_ && !recording_) {
      observer_(w.chosen->address,
                std::chrono::duration<double>(std::chrono::steady_clock::now() - l.sent_at).count());
    }
    MM_RETURN_IF_ERROR(CheckAnswer(s, lane));
    if (b.on_device || l.combined) continue;  // summed per token: added below
    const float* row = w.outputs.data;
    for (int gi : w.groups) {
      group_rows[gi] = row;
      row += l.work.groups[gi].rows.size() * static_cast<size_t>(h);
    }
  }
  if (b.on_device) return absl::OkStatus();  // the rows are copied into `out` on the GPU
  const auto combine_start = std::chrono::steady_clock::now();
  if (l.combined) {
    // The shards' sums, in shard order (one shard: its rows exactly).
    std::fill(out, out + static_cast<size_t>(b.num_tokens) * h, 0.f);
    for (const auto& sp : shards_) {
      const Shard::Work& w = sp->lane[lane];
      if (w.groups.empty()) continue;
      for (size_t i = 0; i < w.tokens.size(); ++i) {
        const float* src = w.outputs.data + i * h;
        float* dst = out + static_cast<size_t>(w.tokens[i]) * h;
        for (int d = 0; d < h; ++d) dst[d] += src[d];
      }
    }
  } else {
    CombineExpertRows(l.work, group_rows, b.num_tokens, out);
  }
  combine_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - combine_start).count();
  return absl::OkStatus();
}

absl::Status RemoteExpertExecutor::CheckAnswer(Shard& s, int lane) {
  Shard::Work& w = s.lane[lane];
  const Lane& l = lanes_[lane];
  const int layer = l.batch.layer;
  const bool in_step = w.response.step() == l.step && w.response.layer() == layer;
  if (!in_step || static_cast<size_t>(w.outputs.rows) != w.rows_out) {
    w.chosen->Reset(lane);  // out of step with this worker: start afresh next time
  }
  if (!in_step) {
    return absl::InternalError(absl::StrCat("expert worker ", w.chosen->address, " answered step ",
                                            w.response.step(), " layer ", w.response.layer(), ", expected step ",
                                            l.step, " layer ", layer));
  }
  if (static_cast<size_t>(w.outputs.rows) != w.rows_out) {
    return absl::InternalError(absl::StrCat("expert worker ", w.chosen->address, " returned ", w.outputs.rows,
                                            " rows, expected ", w.rows_out));
  }
  return absl::OkStatus();
}

absl::Status RemoteExpertExecutor::StartOnDevice(const ExpertBatch& b, int lane) {
  const int h = hidden_size_;
  if (b.layer < 0 || b.layer >= static_cast<int>(layer_shard_.size()) || layer_shard_[b.layer] < 0) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", b.layer, " has no routed experts on the workers"));
  }
  Lane& l = lanes_[lane];
  for (auto& s : shards_) s->lane[lane].device_batch = nullptr;
  Shard& s = *shards_[layer_shard_[b.layer]];
  Shard::Work& w = s.lane[lane];
  v1::DispatchRequest& req = w.request;
  req.Clear();
  req.set_step(l.step);
  req.set_layer(b.layer);
  req.set_micro_batch(lane);
  SetF32Shape(b.num_tokens, h, req.mutable_hidden_states());
  req.mutable_ipc()->set_slots(b.routing_on_device ? b.slots : 0);
  if (!b.routing_on_device) {  // grouped here; the worker combines
    MM_RETURN_IF_ERROR(GroupByExpert(b, num_experts_, &l.work));
    for (const ExpertWork::Group& g : l.work.groups) {
      v1::ExpertRows* rows = req.add_groups();
      rows->set_expert(g.expert);
      rows->mutable_rows()->Add(g.rows.begin(), g.rows.end());
      rows->mutable_weights()->Add(g.weights.begin(), g.weights.end());
    }
  }
  w.chosen = nullptr;
  w.rows.clear();
  w.rows_out = static_cast<size_t>(b.num_tokens);
  w.device_batch = &l.batch;  // until Finish
  w.device_out = l.out;
  return SendFirst(s, lane);
}

absl::Status RemoteExpertExecutor::RecordTo(Shard& s, int lane, Replica* r) {
  Shard::Work& w = s.lane[lane];
  ExpertTransport* t = r->transport[lane].get();
  // A transport is set up by the step that ran before the capture; one
  // made now would set up inside it.
  if (w.device_batch == nullptr || t == nullptr || !t->records()) {
    if (t != nullptr && !t->records()) cannot_record_ = true;  // events, or a counter the worker gave another
    record_failed_ = true;
    return absl::FailedPreconditionError(absl::StrCat("expert worker ", r->address, ": its connection cannot record"));
  }
  int index = 0;
  while (index < static_cast<int>(shards_.size()) && shards_[index].get() != &s) ++index;
  bool begun = false;
  for (const RecordedHop& h : recorded_) begun = begun || h.transport == t;
  if (!begun) {
    if (absl::Status st = t->BeginRecording(); !st.ok()) {
      record_failed_ = true;
      return absl::FailedPreconditionError(st.message());
    }
    recorded_.push_back({index, lane, t, -1});
  }
  if (absl::Status st = r->Send(lane, w.request, w.rows, w.device_batch); !st.ok()) {
    record_failed_ = true;
    return absl::FailedPreconditionError(st.message());
  }
  return absl::OkStatus();
}

absl::Status RemoteExpertExecutor::BeginRecording() {
  if (!replays()) return absl::FailedPreconditionError("these expert connections cannot record");
  if (recording_) return absl::FailedPreconditionError("recording already");
  for (const Lane& l : lanes_) {
    if (l.busy) return absl::FailedPreconditionError("a batch is away: recording starts between steps");
  }
  recording_ = true;
  record_failed_ = false;
  recorded_.clear();
  return absl::OkStatus();
}

absl::Status RemoteExpertExecutor::EndRecording(bool keep, int64_t* id) {
  if (!recording_) return absl::FailedPreconditionError("not recording");
  recording_ = false;
  keep = keep && !record_failed_ && !recorded_.empty();
  for (const Lane& l : lanes_) keep = keep && !l.busy;
  absl::Status first;
  for (RecordedHop& h : recorded_) {
    absl::StatusOr<int64_t> got = h.transport->EndRecording(keep);
    if (got.ok()) {
      h.id = *got;
    } else if (first.ok()) {
      first = got.status();
    }
  }
  std::vector<RecordedHop> hops = std::move(recorded_);
  recorded_.clear();
  *id = -1;
  if (!keep || !first.ok()) {
    for (const RecordedHop& h : hops) {
      if (h.id >= 0) h.transport->ForgetRecording(h.id);
    }
    for (Lane& l : lanes_) l.busy = false;
    return first.ok() ? absl::FailedPreconditionError("the recording failed") : first;
  }
  *id = ++next_recording_;
  recordings_[*id] = std::move(hops);
  return absl::OkStatus();
}

RemoteExpertExecutor::Replica* RemoteExpertExecutor::RecordedOn(const RecordedHop& h) const {
  if (h.shard >= static_cast<int>(shards_.size())) return nullptr;
  for (const auto& r : shards_[h.shard]->replicas) {
    if (r->transport[h.lane].get() == h.transport) return r.get();
  }
  return nullptr;
}

void RemoteExpertExecutor::ForgetRecording(int64_t id) {
  auto it = recordings_.find(id);
  if (it == recordings_.end()) return;
  // Only transports still in place are told (the others took their
  // recordings with them).
  for (const RecordedHop& h : it->second) {
    if (RecordedOn(h) != nullptr) h.transport->ForgetRecording(h.id);
  }
  recordings_.erase(it);
}

absl::Status RemoteExpertExecutor::Replay(int64_t id, const std::function<absl::Status()>& launch) {
  auto it = recordings_.find(id);
  if (it == recordings_.end()) return absl::FailedPreconditionError("no such recording");
  AdoptChanges();
  const std::vector<RecordedHop>& hops = it->second;
  // Each transport recorded must still be one of its shard's replicas'.
  std::vector<Replica*> replicas;
  for (const RecordedHop& h : hops) {
    Replica* found = RecordedOn(h);
    if (found == nullptr) {
      return absl::FailedPreconditionError("an expert connection the graph was recorded on is gone");
    }
    replicas.push_back(found);
  }
  // The numbers first, then the launch, then the requests: the step's GPU
  // work starts while the messages go, and the workers' waits pass at once
  // for rows already written.
  for (size_t i = 0; i < hops.size(); ++i) {
    if (absl::Status st = hops[i].transport->ArmReplay(hops[i].id); !st.ok()) {
      for (size_t j = 0; j < i; ++j) hops[j].transport->DisarmReplay();
      return st;
    }
  }
  if (absl::Status st = launch(); !st.ok()) {
    for (const RecordedHop& h : hops) h.transport->DisarmReplay();
    return st;
  }
  // A worker lost now has had its waits released: the step's rows are
  // wrong, and Settle says ABORTED (the step runs again). Its connection is
  // dropped once every request has gone (dropping it waits for the GPU,
  // which waits for the other workers' rows).
  std::vector<size_t> lost;
  for (size_t i = 0; i < hops.size(); ++i) {
    if (!hops[i].transport->SendReplay(&step_).ok()) lost.push_back(i);
  }
  for (size_t i : lost) {
    Fail(replicas[i], hops[i].lane);
    spoiled_ = true;
  }
  return absl::OkStatus();
}

}  // namespace moemesh
