#ifndef MOEMESH_SERVICES_EXPERT_EXPERT_SERVICE_H_
#define MOEMESH_SERVICES_EXPERT_EXPERT_SERVICE_H_

#include <atomic>

#include <vector>

#include "moemesh/v1/expert.grpc.pb.h"
#include "services/common/tensor_proto.h"
#include "services/expert/device_rows.h"
#include "services/expert/expert_worker.h"

namespace moemesh {

class ExpertMetrics;
class FrameSocket;

// gRPC adapter of ExpertWorker. A request that cannot be served is answered
// with error_code/error_message in its response, so one bad step does not
// tear down the router's long-lived stream.
class ExpertServiceImpl final : public v1::ExpertService::Service {
 public:
  // `worker` must outlive the service.
  explicit ExpertServiceImpl(ExpertWorker* worker) : worker_(worker) {}

  grpc::Status Dispatch(grpc::ServerContext* context,
                        grpc::ServerReaderWriter<v1::DispatchResponse, v1::DispatchRequest>* stream) override;
  grpc::Status GetShardInfo(grpc::ServerContext* context, const v1::GetShardInfoRequest* request,
                            v1::ShardInfo* response) override;

  // Serves one request (exposed for tests).
  void Handle(const v1::DispatchRequest& request, v1::DispatchResponse* response);
  // Serves Dispatch frames on the raw data channel (FrameServer's callback)
  // until the router leaves: the same messages as the stream, with the
  // tensors' bytes as frame payloads.
  void ServeFrames(FrameSocket* socket);

  // Requests being computed or answered; the Dispatch streams themselves
  // stay open between steps and do not count.
  int busy() const { return busy_.load(); }
  // Where to report requests (null: nowhere). Must outlive the service.
  void set_metrics(ExpertMetrics* m) { metrics_ = m; }
  // The raw data channel's port, advertised in ShardInfo (0: none).
  void set_data_port(int port) { data_port_ = port; }
  // Shares rows in GPU memory with routers on this host (CUDA IPC),
  // advertised in ShardInfo.cuda_ipc; null: not offered. Must outlive the
  // service.
  void set_device_rows(DeviceRowsServer* d) { device_rows_ = d; }
  // Fault injection: every layer's answer is held back this long (a slow
  // replica, for the fault tests); 0: none.
  void set_fault_delay_ms(int ms) { fault_delay_ms_ = ms; }

 private:
  // Runs `request` on `hidden`; fills the response's ids (and error) and
  // writes the outputs to `out`. Shared by both transports.
  void Run(const v1::DispatchRequest& request, const absl::StatusOr<F32Matrix>& hidden,
           v1::DispatchResponse* response, std::vector<float>* out);
  // Serves a CUDA IPC request (a setup, or work in the connection's
  // `session`), on either transport; the response carries no rows.
  void ServeDeviceRows(const v1::DispatchRequest& request, std::unique_ptr<DeviceRowsServer::Session>* session,
                       v1::DispatchResponse* response);

  ExpertWorker* worker_;
  std::atomic<int> busy_{0};
  int data_port_ = 0;
  DeviceRowsServer* device_rows_ = nullptr;
  ExpertMetrics* metrics_ = nullptr;
  int fault_delay_ms_ = 0;
  // Holds an answer back by fault_delay_ms_.
  void InjectedDelay() const;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_EXPERT_EXPERT_SERVICE_H_
