#ifndef MOEMESH_SERVICES_EXPERT_CLIENT_REMOTE_EXPERT_EXECUTOR_H_
#define MOEMESH_SERVICES_EXPERT_CLIENT_REMOTE_EXPERT_EXECUTOR_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/experts/expert_executor.h"
#include "services/expert_client/expert_transport.h"
#include "core/experts/expert_work.h"
#include "core/experts/placement.h"

namespace moemesh {

// Runs a layer's routed experts on remote expert workers: groups the rows by
// expert (GroupByExpert), sends each shard the groups it holds over its
// ExpertTransport (all shards in flight at once), and adds the returned
// rows per token in increasing expert order (CombineExpertRows), as
// LocalExpertExecutor does: with CPU experts the mesh's logits equal the
// single-process engine's bit for bit.
//
// A shard may have several replicas: steps rotate among them, and since an
// expert call is a pure function, a request that fails on one replica is
// sent again to the next, as is one that a silent replica did not answer
// within Options.receive_timeout_ms; a replica that failed is passed over
// for Options.eject_ms (outlier ejection), then probed by the next request.
// The step fails with UNAVAILABLE only when every replica of a shard has
// failed it.
//
// Two batches may be away at once (lanes(), Start / Finish: micro-batch
// ping-pong): each lane has its own connection to each replica, so the
// workers see two independent streams of requests, and neither side
// waits on the other's buffers. Not thread-safe: the engine calls it from
// its step thread.
class RemoteExpertExecutor : public ExpertExecutor {
 public:
  // The rows' dtype on the wire. kAuto sends bf16 (half the bytes) to shards
  // whose workers all say bf16 rows give exactly what f32 rows do (GPU
  // workers: ShardInfo.bf16_rows_exact), f32 to the rest; kBf16 sends bf16
  // everywhere (on CPU workers the rows are then rounded: results move by
  // bf16 rounding); kF32 never does. kFp8 sends FP8 rows with a scale per
  // 128 columns (a quarter of f32's bytes; core/quant/fp8_rows.h) to shards
  // whose workers all take them (ShardInfo.fp8_rows), and what kAuto would
  // to the rest (Options.warn says so); results move by FP8's rounding of
  // the rows. The answers are f32 unless Options.answers asks for bf16;
  // rows that stay on a GPU (cuda-ipc's device mode) are never converted. Like the transport, the
  // choice is made once, at Connect: a replica replaced later by a worker
  // of another kind needs a new executor (a router restart).
  enum class Rows { kAuto, kF32, kBf16, kFp8 };
  // The answers' dtype on the wire: f32 (exact), or bf16 (half the bytes
  // back, as DeepEP's combine sends them; results move by bf16 rounding) from
  // shards whose workers all offer it (ShardInfo.bf16_outputs; the rest
  // answer f32, and Options.warn says so). Never for rows that stay on a GPU.
  enum class Answers { kF32, kBf16 };
  // Who adds a token's expert rows. kAuto: the worker, for a layer whose
  // experts are all on one shard (it adds them in the order this executor
  // would: the same sums, top_k times fewer rows back); this executor
  // otherwise. kWorkers: each worker adds what it holds and this executor
  // adds the shards' sums (top_k times fewer rows back; where a token's
  // experts are on several shards the additions come in another order, so
  // results move by f32 rounding). kRouter: always this executor.
  enum class Combine { kAuto, kWorkers, kRouter };
  struct Options {
    int connect_timeout_ms = 10000;
    const ShardPlacement* placement = nullptr;  // null: modulo
    bool use_data_channel = true;
    Rows rows = Rows::kAuto;
    Answers answers = Answers::kF32;
    Combine combine = Combine::kAuto;
    // A replica silent this long while an answer is awaited (stopped,
    // wedged) is given up and the request sent to the shard's next replica,
    // over either transport; 0: wait forever (TransportOptions).
    int receive_timeout_ms = 0;
    // A replica that failed (or timed out) is passed over for this long
    // while the shard has others; then the next request probes it.
    int eject_ms = 5000;
    // Retry throttling, as gRPC's (gRFC A6): a budget of `retry_tokens`
    // that each failed call spends one of and each answered call earns 0.1
    // back; past half spent, a failed call is not sent again (the step
    // fails UNAVAILABLE) until answers refill it. In steady failure that
    // keeps attempts within about 1.1 times the calls, so sick replicas
    // cannot multiply the traffic. 0: never retry.
    int retry_tokens = 10;
    // Hedging: a shard's request still unanswered after this long is sent
    // to its next live replica too, and the first answer taken (the other
    // connection is dropped, its answer unread): a slow replica costs this
    // delay, not its own, and is passed over for eject_ms as a failed one
    // would be (then probed). Only where both transports can say when their
    // answer comes (the data channel, and cuda-ipc over it; not the gRPC
    // stream). A hedge is not sent while the retry budget is past half
    // spent, so hedges and retries together stay near 1.1 times the calls
    // in steady trouble. 0: never.
    int hedge_ms = 0;
    // Shards given as a source (AddressSource: dns:///NAME:PORT, file:PATH)
    // are asked this often for their replicas: new ones are connected and
    // checked off the step thread and used from the next step on; gone
    // ones are dropped (never a shard's last).
    int resolve_period_ms = 5000;
    // A router on GPU `cuda_device` (-1: none) whose workers offer the
    // cuda-ipc transport (TransportOptions::device_rows, set by CUDA
    // builds): where every replica takes it and each MoE layer's experts
    // are all on one shard, Execute takes rows and routing in that GPU's
    // memory and they never leave it (cuda_device(), groups_on_device());
    // otherwise the rows go through the host as before.
    int cuda_device = -1;
    std::function<ExpertTransportFactory(const v1::ShardInfo&, ExpertTransportFactory)> device_rows;
    // Told why the rows go through the host after all, where the cuda-ipc
    // transport was negotiated but cannot be set up.
    std::function<void(const std::string&)> warn;
    // In device mode over cuda-ipc with a counter: let a GPU forward pass
    // capture steps into CUDA graphs whose requests are replayed
    // (replays()). The router sets it unless --enforce-eager.
    bool graph_steps = false;
  };
  // `shards[i]` lists the replicas (addresses) of shard i of
  // `shards.size()`, placed by `options.placement` (null: modulo). Checks
  // that every worker holds exactly the experts the placement gives its
  // shard (FAILED_PRECONDITION otherwise); UNAVAILABLE when one cannot be
  // reached within `connect_timeout_ms`. The transport to each worker is
  // negotiated from what it advertises (NegotiateTransport): with
  // `use_data_channel`, its raw data channel where it offers one, else the
  // gRPC stream.
  static absl::StatusOr<std::unique_ptr<RemoteExpertExecutor>> Connect(
      const std::vector<std::vector<std::string>>& shards, int hidden_size, const Options& options);
  // With the default Options.
  static absl::StatusOr<std::unique_ptr<RemoteExpertExecutor>> Connect(
      const std::vector<std::vector<std::string>>& shards, int hidden_size);
  // One replica per shard.
  static absl::StatusOr<std::unique_ptr<RemoteExpertExecutor>> Connect(
      const std::vector<std::string>& shard_addresses, int hidden_size, int connect_timeout_ms = 10000);

  // Parses --expert-rows: auto, f32, bf16 or fp8.
  static absl::StatusOr<Rows> ParseRows(const std::string& value);
  // Parses --expert-answers: f32 or bf16.
  static absl::StatusOr<Answers> ParseAnswers(const std::string& value);
  // Parses --expert-combine: auto, workers or router.
  static absl::StatusOr<Combine> ParseCombine(const std::string& value);
  // Parses "a|b,c" (shards separated by ',', replicas by '|'); a shard may
  // instead be one source of replicas, dns:///NAME:PORT or file:PATH
  // (AddressSource).
  static absl::StatusOr<std::vector<std::vector<std::string>>> ParseAddresses(const std::string& spec);

  // Requests resent to another replica after a failure (for tests and metrics).
  int64_t retries() const { return retries_; }
  // Requests also sent to a second replica because the first was slow.
  int64_t hedges() const { return hedges_; }
  // Bytes of rows (with FP8's scales) sent and of answers received through
  // the host so far, every attempt counted (rows that stay on a GPU are not).
  int64_t row_bytes_sent() const { return row_bytes_sent_; }
  int64_t answer_bytes_received() const { return answer_bytes_received_; }
  // The addresses of `shard`'s replicas in use (for tests and logs).
  std::vector<std::string> replicas(int shard) const;
  // Seconds spent adding the returned rows into the output, since the start.
  double combine_seconds() const { return combine_seconds_; }
  // Called with a worker's address and the seconds from sending a request
  // to it until its answer was read, for every answered request.
  void set_dispatch_observer(std::function<void(const std::string&, double)> f) { observer_ = std::move(f); }
  // The transport each shard's first replica uses ("frames", "grpc-stream").
  std::vector<std::string> transports() const;
  // The dtype each shard's rows are sent in (kF32, kBf16 or kFp8).
  std::vector<Rows> row_types() const;
  // The dtype each shard answers in.
  std::vector<Answers> answer_types() const;
  // Per shard whose results are not exact: "shard I: " its workers'
  // ShardInfo.results_tag and what the wire rounds ("rows=fp8", "rows=bf16"
  // to workers that would not round them, "answers=bf16"), ";"-separated.
  std::string ResultsTag() const override;
  ~RemoteExpertExecutor() override;

  // Lanes of micro-batches that may be away at once.
  static constexpr int kLanes = 2;

  absl::Status Execute(const ExpertBatch& batch, float* out) override;
  int lanes() const override { return kLanes; }
  absl::Status Start(const ExpertBatch& batch, float* out, int lane) override;
  absl::Status Finish(int lane) override;
  // Reads the answers that cuda-ipc transports with a counter left unread
  // (ExpertTransport::defers_answers); a replica that failed is failed as a
  // lost one would be. Execute settles before it returns.
  absl::Status Settle() override;
  int cuda_device() const override { return cuda_device_; }
  bool groups_on_device() const override { return cuda_device_ >= 0; }
  bool capturable() const override { return false; }
  // In device mode over transports that record (cuda-ipc with a counter):
  // a recording names the replica each layer went to, and its replays go
  // there (no rotation) until the graph is dropped; a failed or replaced
  // replica makes its replays FAILED_PRECONDITION.
  bool replays() const override { return options_.graph_steps && cuda_device_ >= 0 && !cannot_record_; }
  absl::Status BeginRecording() override;
  absl::Status EndRecording(bool keep, int64_t* id) override;
  absl::Status Replay(int64_t id, const std::function<absl::Status()>& launch) override;
  void ForgetRecording(int64_t id) override;

 private:
  struct Replica;
  struct Shard;
  struct Lane;
  RemoteExpertExecutor() = default;
  // Connects to the worker at `address`, checks that it serves `shard` as
  // placed, and negotiates its transport; its ShardInfo into `info`.
  absl::StatusOr<std::unique_ptr<Replica>> MakeReplica(const std::string& address, int shard,
                                                       v1::ShardInfo* info) const;
  // The resolver thread: asks each source shard for its replicas every
  // Options.resolve_period_ms and makes the changes ready.
  void ResolveLoop();
  // Takes the ready changes into the shards, when no batch is away.
  void AdoptChanges();
  // Fills each shard's request in `lane` from its work.
  void Partition(int lane);
  // Start and Finish, without the clean-up after an error.
  absl::Status StartOnce(const ExpertBatch& batch, float* out, int lane);
  absl::Status FinishOnce(int lane);
  // StartOnce for rows in GPU memory (the cuda-ipc transport): the whole
  // layer to the one shard that holds it, combined there.
  absl::Status StartOnDevice(const ExpertBatch& batch, int lane);
  // Drops the connections of `lane` that still owe an answer, so that the
  // next request is not answered with stale rows.
  void Abandon(int lane);
  // Sends s's request of `lane` to its first replica, ejecting it when it
  // is gone. A refusal (not a lost worker) is the error.
  absl::Status SendFirst(Shard& s, int lane);
  // Checks the answer s gave in `lane` (its step's, as many rows as asked).
  absl::Status CheckAnswer(Shard& s, int lane);
  // Sets up cuda-ipc ahead (Connect): device mode, or the host's
  // transports after all.
  void EnterDeviceMode(const Options& options);
  // Receives s's request of `lane` (sending it where the first send
  // failed), moving to the next replica when one is lost.
  absl::Status Exchange(Shard& s, int lane);
  // With hedge_ms: waits that long for the answer of s's first replica in
  // `lane`; without one, sends the request to the next live replica too
  // and returns whichever answers first (the other's connection dropped).
  // Otherwise, and where it cannot hedge, w.sent_to. The replica's index.
  size_t Hedge(Shard& s, int lane);
  size_t FirstLive(const Shard& s) const;
  std::vector<size_t> Order(const Shard& s) const;
  // Sends s's request of `lane` to `r`: a lost worker is failed (ejected),
  // a refused request drops the lane's transport; the send's status.
  absl::Status SendTo(Shard& s, int lane, Replica* r);
  absl::Status Attempt(Shard& s, int lane, Replica* r, bool send);
  void Fail(Replica* r, int lane);
  // SendTo while recording: the transport records the request instead.
  absl::Status RecordTo(Shard& s, int lane, Replica* r);

  std::vector<std::unique_ptr<Shard>> shards_;
  double retry_tokens_ = 10, max_retry_tokens_ = 10;  // Options.retry_tokens
  int cuda_device_ = -1;           // device mode: the router's GPU
  // Per layer: the one shard that holds every expert of it; -1 where no
  // shard holds any, -2 where they are spread over several.
  std::vector<int> layer_shard_;
  Combine combine_ = Combine::kAuto;
  std::unique_ptr<ShardPlacement> placement_;
  int hidden_size_ = 0;
  int num_experts_ = 0;
  uint64_t step_ = 0;
  int64_t retries_ = 0;
  int64_t hedges_ = 0;
  int64_t row_bytes_sent_ = 0, answer_bytes_received_ = 0;
  int hedge_ms_ = 0;
  // A replica dropped (source changes) whose answers owed could not be
  // read: the next Settle says ABORTED.
  bool spoiled_ = false;
  int receive_timeout_ms_ = 0;
  int eject_ms_ = 5000;
  double combine_seconds_ = 0;
  std::vector<Lane> lanes_;  // kLanes: the batch away in each
  // Recording (BeginRecording to EndRecording): the transports that
  // recorded hops, by shard and lane; the recordings kept, by id.
  struct RecordedHop {
    int shard = 0, lane = 0;
    ExpertTransport* transport = nullptr;  // compared, not used, until found among the replicas
    int64_t id = -1;                       // the transport's recording
  };
  // The replica whose transport `h` is still, or null (dropped, replaced).
  Replica* RecordedOn(const RecordedHop& h) const;
  bool recording_ = false;
  bool record_failed_ = false;
  bool cannot_record_ = false;  // a transport that cannot record was met
  std::vector<RecordedHop> recorded_;
  std::map<int64_t, std::vector<RecordedHop>> recordings_;
  int64_t next_recording_ = 0;
  std::function<void(const std::string&, double)> observer_;
  Options options_;  // as given to Connect (placement_ holds the placement)
  absl::Mutex changes_mu_;
  bool stop_resolving_ ABSL_GUARDED_BY(changes_mu_) = false;
  std::thread resolver_;  // with source shards
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_EXPERT_CLIENT_REMOTE_EXPERT_EXECUTOR_H_
