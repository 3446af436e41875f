#include "services/expert_client/grpc_stream_transport.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace moemesh {

GrpcStreamTransport::GrpcStreamTransport(std::shared_ptr<grpc::Channel> channel, int hidden_size,
                                         int receive_timeout_ms)
    : hidden_size_(hidden_size), stub_(v1::ExpertService::NewStub(std::move(channel))), timeout_ms_(receive_timeout_ms) {
  stream_ = stub_->Dispatch(&context_);
  if (timeout_ms_ > 0) watchdog_ = std::thread([this] { Watch(); });
}

GrpcStreamTransport::~GrpcStreamTransport() {
  if (watchdog_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    watchdog_.join();
  }
  context_.TryCancel();
  stream_->Finish();
}

// Cancels the stream when a Receive waits past its deadline.
void GrpcStreamTransport::Watch() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    if (!waiting_) {
      cv_.wait(lock);
      continue;
    }
    if (cv_.wait_until(lock, deadline_) == std::cv_status::timeout && waiting_ && !stop_ &&
        std::chrono::steady_clock::now() >= deadline_) {
      timed_out_ = true;
      waiting_ = false;
      context_.TryCancel();
    }
  }
}

absl::Status GrpcStreamTransport::Send(const v1::DispatchRequest& header, absl::Span<const iovec> rows) {
  full_ = header;
  size_t bytes = 0;
  for (const iovec& v : rows) bytes += v.iov_len;
  std::string* data = full_.mutable_hidden_states()->mutable_data();
  data->resize(bytes);
  char* p = data->data();
  for (const iovec& v : rows) {
    std::memcpy(p, v.iov_base, v.iov_len);
    p += v.iov_len;
  }
  if (!stream_->Write(full_)) return absl::UnavailableError("the Dispatch stream closed");
  return absl::OkStatus();
}

absl::Status GrpcStreamTransport::Receive(v1::DispatchResponse* response, F32Matrix* outputs) {
  if (timeout_ms_ > 0) {
    std::lock_guard<std::mutex> lock(mu_);
    waiting_ = true;
    deadline_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms_);
    cv_.notify_all();
  }
  const bool read = stream_->Read(response);
  if (timeout_ms_ > 0) {
    std::lock_guard<std::mutex> lock(mu_);
    waiting_ = false;
    if (!read && timed_out_) {
      return absl::UnavailableError(absl::StrCat("the Dispatch stream: no answer within ", timeout_ms_, " ms"));
    }
  }
  if (!read) return absl::UnavailableError("the Dispatch stream closed");
  *outputs = F32Matrix{};
  // An error, or the answer to CUDA IPC work (its rows are on a GPU).
  if (response->error_code() != 0 || !response->has_outputs()) return absl::OkStatus();
  const std::string& data = response->outputs().data();
  auto m = GetRowsAsF32(response->outputs(), data.data(), data.size(), hidden_size_, "outputs",
                        v1::Tensor::default_instance(), &widened_);
  if (!m.ok()) return absl::InternalError(m.status().message());
  *outputs = *m;
  return absl::OkStatus();
}

}  // namespace moemesh
