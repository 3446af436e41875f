#ifndef MOEMESH_SERVICES_COMMON_GENERATE_PARAMS_PROTO_H_
#define MOEMESH_SERVICES_COMMON_GENERATE_PARAMS_PROTO_H_

#include <vector>

#include "core/engine/request.h"
#include "moemesh/v1/common.pb.h"
#include "moemesh/v1/router.pb.h"

namespace moemesh {

// Sampling parameters from the wire; unset fields take request.h's
// defaults (temperature 1, as vLLM and the OpenAI API).
SamplingParams SamplingFromProto(const v1::SamplingParams& p);

// Everything the router needs to run a request (not validated here).
GenerateParams GenerateParamsFromProto(const v1::RouterGenerateRequest& r);

// Fills `out` with the engine's log probabilities (no token text).
void LogprobsToProto(float logprob, const std::vector<TokenLogprob>& top, v1::TokenLogprobs* out);

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_COMMON_GENERATE_PARAMS_PROTO_H_
