#include "services/common/generate_params_proto.h"

namespace moemesh {

SamplingParams SamplingFromProto(const v1::SamplingParams& p) {
  SamplingParams s;  // request.h's defaults for the fields left unset
  if (p.has_temperature()) s.temperature = p.temperature();
  if (p.has_top_k()) s.top_k = p.top_k();
  if (p.has_top_p()) s.top_p = p.top_p();
  if (p.has_min_p()) s.min_p = p.min_p();
  if (p.has_repetition_penalty()) s.repetition_penalty = p.repetition_penalty();
  if (p.has_presence_penalty()) s.presence_penalty = p.presence_penalty();
  if (p.has_frequency_penalty()) s.frequency_penalty = p.frequency_penalty();
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
