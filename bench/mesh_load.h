#ifndef MOEMESH_BENCH_MESH_LOAD_H_
#define MOEMESH_BENCH_MESH_LOAD_H_

// The load the mesh benchmarks put on a gateway: streams of greedy tokens
// from short prompts of token ids, EOS ignored, timed by wall clock.

#include <algorithm>
#include <chrono>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "moemesh/v1/gateway.grpc.pb.h"

namespace moemesh::bench {

inline double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Stream i's prompt: a few token ids that differ from stream to stream.
inline std::vector<int> Prompt(int i) { return {1 + i % 50, 7 + i % 13, 42, 5 + i}; }

inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Stream i through the gateway's gRPC API: n greedy tokens. False when the
// call fails or comes short.
inline bool GreedyGrpcStream(v1::Gateway::Stub* gateway, int i, int n) {
  v1::GenerateRequest r;
  std::vector<int> p = Prompt(i);
  r.mutable_token_ids()->mutable_ids()->Add(p.begin(), p.end());
  r.set_max_tokens(n);
  r.set_ignore_eos(true);
  r.mutable_sampling()->set_temperature(0);
  grpc::ClientContext ctx;
  auto reader = gateway->Generate(&ctx, r);
  v1::GenerateResponse resp;
  int got = 0;
  while (reader->Read(&resp)) got += resp.token_ids_size();
  return reader->Finish().ok() && got == n;
}

}  // namespace moemesh::bench

#endif  // MOEMESH_BENCH_MESH_LOAD_H_
