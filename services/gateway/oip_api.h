#ifndef MOEMESH_SERVICES_GATEWAY_OIP_API_H_
#define MOEMESH_SERVICES_GATEWAY_OIP_API_H_

#include <string>

#include "absl/status/statusor.h"
#include "inference/grpc_predict_v2.pb.h"
#include "moemesh/v1/gateway.pb.h"
#include "services/gateway/openai_api.h"

namespace moemesh {

// The Open Inference Protocol's translation (docs/OPERATIONS.md, "Open
// Inference Protocol"), apart from its gRPC server. The model takes the
// inputs Triton's vLLM backend takes, so that its clients work unchanged:
//   text_input               BYTES [1]  the prompt (required)
//   stream                   BOOL  [1]  ModelStreamInfer: a response per piece of text
//   sampling_parameters      BYTES [1]  JSON: /v1/completions' fields (max_tokens, temperature, ...)
//   exclude_input_in_output  BOOL  [1]  text_output leaves the prompt out (streams always do)
// and answers text_output, BYTES [1]. The request's `parameters` are
// sampling parameters too.
struct InferRequest {
  CompletionRequest completion;
  bool stream = false;
  bool exclude_input = false;
};

// INVALID_ARGUMENT naming the input for an unknown or malformed input, a
// missing text_input, or bad sampling parameters.
absl::StatusOr<InferRequest> ParseInferRequest(const inference::ModelInferRequest& request);

// A response holding `text` as text_output, for `request` (its model name
// and id echoed); `final` marks a stream's last (Triton's
// triton_final_response parameter).
inference::ModelInferResponse InferResponse(const inference::ModelInferRequest& request, const std::string& model,
                                            const std::string& text, v1::FinishReason reason, bool final);

// The model's metadata: its inputs and outputs as above.
inference::ModelMetadataResponse ModelMetadata(const std::string& model);

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_GATEWAY_OIP_API_H_
