#include "services/expert/expert_service.h"

#include <chrono>
#include <thread>

#include "core/tensor/dtype.h"
#include "services/common/frame_socket.h"
#include "services/expert/expert_metrics.h"
#include "services/common/grpc_status.h"
#include "services/common/host_id.h"
#include "services/common/tensor_proto.h"

namespace moemesh {

void ExpertServiceImpl::Run(const v1::DispatchRequest& request, const absl::StatusOr<F32Matrix>& hidden,
                            v1::DispatchResponse* response, std::vector<float>* out) {
  response->set_step(request.step());
  response->set_layer(request.layer());
  response->set_micro_batch(request.micro_batch());
  auto fail = [&](const absl::Status& s) {
    response->set_error_code(static_cast<int>(s.code()));
    response->set_error_message(std::string(s.message()));
  };
  out->clear();
  if (!hidden.ok()) {
    if (metrics_) metrics_->ObserveRequest(0, 0, false);
    return fail(hidden.status());
  }
  ExpertWork work;
  work.layer = request.layer();
  work.num_rows = static_cast<int>(hidden->rows);
  work.hidden_size = static_cast<int>(hidden->cols);
  work.hidden_states = hidden->data;
  work.groups.reserve(request.groups_size());
  for (const v1::ExpertRows& g : request.groups()) {
    work.groups.push_back({g.expert(), {g.rows().begin(), g.rows().end()}, {g.weights().begin(), g.weights().end()}});
  }
  int rows = 0;
  for (const ExpertWork::Group& g : work.groups) rows += static_cast<int>(g.rows.size());
  const auto t0 = std::chrono::steady_clock::now();
  absl::Status st = request.combine() ? worker_->RunCombined(work, out) : worker_->Run(work, out);
  if (metrics_) {
    metrics_->ObserveRequest(rows, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                             st.ok());
  }
  if (!st.ok()) return fail(st);
}

void ExpertServiceImpl::ServeDeviceRows(const v1::DispatchRequest& request,
                                        std::unique_ptr<DeviceRowsServer::Session>* session,
                                        v1::DispatchResponse* response) {
  response->set_step(request.step());
  response->set_layer(request.layer());
  response->set_micro_batch(request.micro_batch());
  absl::Status st;
  if (device_rows_ == nullptr) {
    st = absl::FailedPreconditionError(
        "this worker offers no CUDA IPC (ShardInfo.cuda_ipc): its experts are not on a GPU, whole layers of them");
  } else if (request.has_ipc_setup()) {
    session->reset();  // its buffers go before the new ones are made
    auto opened = device_rows_->Open(request.ipc_setup(), response->mutable_ipc_buffers());
    if (opened.ok()) {
      *session = std::move(*opened);
    } else {
      st = opened.status();
    }
  } else if (*session == nullptr) {
    st = absl::FailedPreconditionError("CUDA IPC work on a connection that has not set CUDA IPC up");
  } else {
    int64_t rows = 0;
    if (request.ipc().slots() > 0 && request.hidden_states().shape_size() == 2) {
      rows = request.hidden_states().shape(0) * request.ipc().slots();
    }
    for (const v1::ExpertRows& g : request.groups()) rows += g.rows_size();
    const auto t0 = std::chrono::steady_clock::now();
    st = (*session)->Run(request, response);
    if (metrics_) {
      metrics_->ObserveRequest(static_cast<int>(rows),
                               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), st.ok());
    }
  }
  if (!st.ok()) {
    response->clear_ipc_buffers();
    response->set_error_code(static_cast<int>(st.code()));
    response->set_error_message(std::string(st.message()));
  }
}

namespace {

// The answer's rows as the request asked: `out` itself (f32), or rounded
// to bf16 into `packed`. Sets the outputs' header and returns the bytes.
iovec AnswerRows(const v1::DispatchRequest& request, const std::vector<float>& out, int h,
                 std::vector<uint16_t>* packed, v1::Tensor* outputs) {
  const int64_t rows = static_cast<int64_t>(out.size() / h);
  if (!request.bf16_outputs()) {
    SetF32Shape(rows, h, outputs);
    return {const_cast<float*>(out.data()), out.size() * sizeof(float)};
  }
  packed->resize(out.size());
  F32ToBf16N(out.data(), out.size(), packed->data());
  SetBf16Shape(rows, h, outputs);
  return {packed->data(), packed->size() * sizeof(uint16_t)};
}

}  // namespace

void ExpertServiceImpl::Handle(const v1::DispatchRequest& request, v1::DispatchResponse* response) {
  std::vector<float> out, widened;
  const std::string& rows = request.hidden_states().data();
  Run(request,
      GetRowsAsF32(request.hidden_states(), rows.data(), rows.size(), worker_->config().hidden_size,
                   "hidden_states", request.hidden_scales(), &widened),
      response, &out);
  if (response->error_code() != 0) return;
  std::vector<uint16_t> packed;
  const iovec data = AnswerRows(request, out, worker_->config().hidden_size, &packed, response->mutable_outputs());
  response->mutable_outputs()->set_data(static_cast<const char*>(data.iov_base), data.iov_len);
}

void ExpertServiceImpl::InjectedDelay() const {
  if (fault_delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(fault_delay_ms_));
}

void ExpertServiceImpl::ServeFrames(FrameSocket* socket) {
  v1::DispatchRequest request;
  v1::DispatchResponse response;
  std::vector<char> payload;
  std::vector<float> out, widened;
  std::vector<uint16_t> packed;  // bf16 answers
  std::unique_ptr<DeviceRowsServer::Session> session;  // this connection's CUDA IPC
  const int h = worker_->config().hidden_size;
  while (socket->Receive(&request, &payload).ok()) {
    if (metrics_) metrics_->SetQueueDepth(busy_.fetch_add(1) + 1);
    response.Clear();
    const bool ipc = request.has_ipc() || request.has_ipc_setup();
    if (ipc) {
      ServeDeviceRows(request, &session, &response);
      out.clear();
    } else {
      Run(request,
          GetRowsAsF32(request.hidden_states(), payload.data(), payload.size(), h, "hidden_states",
                       request.hidden_scales(), &widened),
          &response, &out);
    }
    InjectedDelay();
    iovec data{out.data(), 0};
    if (response.error_code() == 0 && !ipc) data = AnswerRows(request, out, h, &packed, response.mutable_outputs());
    const bool sent = socket->Send(response, {&data, response.error_code() == 0 && !ipc ? 1u : 0u}).ok();
    if (metrics_) {
      metrics_->SetQueueDepth(busy_.fetch_sub(1) - 1);
    } else {
      busy_.fetch_sub(1);
    }
    if (!sent) return;  // the router went away
  }
}

grpc::Status ExpertServiceImpl::Dispatch(
    grpc::ServerContext* context, grpc::ServerReaderWriter<v1::DispatchResponse, v1::DispatchRequest>* stream) {
  v1::DispatchRequest request;
  std::unique_ptr<DeviceRowsServer::Session> session;  // this stream's CUDA IPC
  while (stream->Read(&request)) {
    if (metrics_) metrics_->SetQueueDepth(busy_.fetch_add(1) + 1);
    v1::DispatchResponse response;
    if (request.has_ipc() || request.has_ipc_setup()) {
      ServeDeviceRows(request, &session, &response);
    } else {
      Handle(request, &response);
    }
    InjectedDelay();
    const bool written = stream->Write(response);
    if (metrics_) {
      metrics_->SetQueueDepth(busy_.fetch_sub(1) - 1);
    } else {
      busy_.fetch_sub(1);
    }
    if (!written) break;  // the router went away
  }
  return grpc::Status::OK;
}

grpc::Status ExpertServiceImpl::GetShardInfo(grpc::ServerContext* context, const v1::GetShardInfoRequest* request,
                                             v1::ShardInfo* response) {
  const ModelConfig& c = worker_->config();
  response->set_model(worker_->options().model_dir);
  response->set_data_port(data_port_);
  response->set_bf16_rows_exact(worker_->bf16_rows_exact());
  response->set_fp8_rows(true);
  response->set_bf16_outputs(true);
  response->set_results_tag(worker_->results_tag());
  if (device_rows_ != nullptr) {
    response->mutable_cuda_ipc()->set_host_id(HostId());
    response->mutable_cuda_ipc()->set_device(device_rows_->device());
    response->mutable_cuda_ipc()->set_device_uuid(device_rows_->device_uuid());
  }
  response->set_shard_index(worker_->options().shard_index);
  response->set_num_shards(worker_->options().num_shards);
  response->set_hidden_size(c.hidden_size);
  response->set_num_layers(c.num_layers);
  response->set_num_experts(c.num_experts);
  for (const auto& [layer, experts] : worker_->HeldExperts()) {
    v1::LayerExperts* le = response->add_experts();
    le->set_layer(layer);
    le->mutable_experts()->Add(experts.begin(), experts.end());
  }
  return grpc::Status::OK;
}

}  // namespace moemesh
