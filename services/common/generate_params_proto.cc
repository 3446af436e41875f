#include "services/common/generate_params_proto.h"

namespace moemesh {

SamplingParams SamplingFromProto(const v1::SamplingParams& p) {
  SamplingParams s;
  s.temperature = p.has_temperature() ? p.temperature() : 1.0f;
  s.top_k = p.has_top_k() ? p.top_k() : 0;
  s.top_p = p.has_top_p() ? p.top_p() : 1.0f;
  s.min_p = p.has_min_p() ? p.min_p() : 0.0f;
  s.repetition_penalty = p.has_repetition_penalty() ? p.repetition_penalty() : 1.0f;
  s.presence_penalty = p.has_presence_penalty() ? p.presence_penalty() : 0.0f;
  s.frequency_penalty = p.has_frequency_penalty() ? p.frequency_penalty() : 0.0f;
  if (p.has_seed()) s.seed = p.seed();
  return s;
}

GenerateParams GenerateParamsFromProto(const v1::RouterGenerateRequest& r) {
  GenerateParams g;
  g.max_new_tokens = r.max_tokens();
  g.sampling = SamplingFromProto(r.sampling());
  g.stop_token_ids.assign(r.stop_token_ids().begin(), r.stop_token_ids().end());
  g.ignore_eos = r.ignore_eos();
  g.logprobs = r.logprobs();
  return g;
}

void LogprobsToProto(float logprob, const std::vector<TokenLogprob>& top, v1::TokenLogprobs* out) {
  out->set_logprob(logprob);
  for (const TokenLogprob& t : top) {
    v1::TopLogprob* p = out->add_top();
    p->set_token_id(t.token);
    p->set_logprob(t.logprob);
  }
}

}  // namespace moemesh
