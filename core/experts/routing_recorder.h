#ifndef MOEMESH_CORE_EXPERTS_ROUTING_RECORDER_H_
#define MOEMESH_CORE_EXPERTS_ROUTING_RECORDER_H_

#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "core/experts/expert_executor.h"

namespace moemesh {

// An executor that records each call's routing (expert ids, [tokens,
// slots]) and hands the call to another: for comparing two engines that
// compute alike up to rounding, where a gate that puts two experts nearly
// level may route a token apart (tests, debugging).
class RoutingRecorder : public ExpertExecutor {
 public:
  // Reads a batch's expert ids; the default reads host memory (a batch
  // whose routing is on a GPU needs a reader that copies it back).
  using ReadIds = std::function<absl::Status(const ExpertBatch&, std::vector<int>*)>;
  explicit RoutingRecorder(std::unique_ptr<ExpertExecutor> inner, ReadIds read = nullptr);

  absl::Status Execute(const ExpertBatch& batch, float* out) override;
  int cuda_device() const override { return inner_->cuda_device(); }
  bool groups_on_device() const override { return inner_->groups_on_device(); }
  std::string ResultsTag() const override { return inner_->ResultsTag(); }

  std::vector<std::vector<int>>& calls() { return calls_; }

 private:
  std::unique_ptr<ExpertExecutor> inner_;
  ReadIds read_;
  std::vector<std::vector<int>> calls_;
};

// Where two recordings part: the first call whose routing differs and its
// first token row ({-1, -1} when none does), the least row routed apart in
// any call (a prompt's rows before it are routed alike in every layer), and
// how many of the token-layers compared differ.
struct RoutingDiff {
  int call = -1, row = -1, first_row = -1;
  size_t tokens = 0, differing = 0;
};
// A token's experts compare as a set (the slots' order does not matter).
RoutingDiff CompareRouting(const std::vector<std::vector<int>>& a, const std::vector<std::vector<int>>& b, int slots);

}  // namespace moemesh

#endif  // MOEMESH_CORE_EXPERTS_ROUTING_RECORDER_H_
