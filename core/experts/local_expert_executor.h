#ifndef MOEMESH_CORE_EXPERTS_LOCAL_EXPERT_EXECUTOR_H_
#define MOEMESH_CORE_EXPERTS_LOCAL_EXPERT_EXECUTOR_H_

#include <memory>

#include "core/experts/expert_device.h"
#include "core/experts/expert_executor.h"
#include "core/experts/expert_work.h"

namespace moemesh {

class ExpertWeightsTable;
class ThreadPool;

// Runs a layer's routed experts in this process: groups the rows by expert
// (GroupByExpert), runs the groups on an ExpertDevice and combines the rows
// per token in increasing expert order, on the device (a GPU combines in
// device memory; with the rows already there, nothing crosses to the host
// but the routing). NOT_FOUND when a batch names an expert the device lacks.
// Not thread-safe (one engine step at a time).
class LocalExpertExecutor : public ExpertExecutor {
 public:
  // The experts of `table` on the CPU, on `pool` (may be null); both must
  // outlive the executor. Expert ids are taken as they come (up to
  // kMaxGatingExperts); the engine uses the constructor below, which knows
  // the model's count.
  LocalExpertExecutor(const ExpertWeightsTable* table, ThreadPool* pool);
  // The experts `device` holds, for a model of `num_experts` experts per layer.
  LocalExpertExecutor(std::unique_ptr<ExpertDevice> device, int num_experts);
  ~LocalExpertExecutor() override;

  absl::Status Execute(const ExpertBatch& batch, float* out) override;
  int cuda_device() const override { return device_->cuda_device(); }
  bool groups_on_device() const override { return device_->groups_on_device(); }
  std::string ResultsTag() const override { return device_->rounds_rows_to_bf16() ? "gpu" : ""; }

 private:
  std::unique_ptr<ExpertDevice> device_;
  int num_experts_;  // -1: from the table (as many as the batch names)
  ExpertWork work_;  // reused step after step
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_EXPERTS_LOCAL_EXPERT_EXECUTOR_H_
