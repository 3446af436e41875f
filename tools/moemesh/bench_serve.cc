#include "tools/moemesh/bench_serve.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "moemesh/v1/gateway.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "services/common/grpc_status.h"
#include "services/common/server_util.h"
#include "services/common/tls.h"

namespace moemesh {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// One request sent, and what came back.
using Send = std::function<RequestRecord(const BenchPrompt&)>;

// Over the gRPC API: a response per token chunk.
RequestRecord SendGrpc(v1::Gateway::Stub* gateway, const BenchServeOptions& o, const std::string& model,
                       const BenchPrompt& p) {
  v1::GenerateRequest r;
  r.set_model(model);
  if (p.ids.empty()) {
    r.set_text(p.text);
  } else {
    r.mutable_token_ids()->mutable_ids()->Add(p.ids.begin(), p.ids.end());
  }
  r.set_max_tokens(p.output_len);
  r.set_ignore_eos(o.ignore_eos);
  r.mutable_sampling()->set_temperature(o.temperature);
  grpc::ClientContext ctx;
  if (!o.api_key.empty()) ctx.AddMetadata("authorization", "Bearer " + o.api_key);
  RequestRecord rec;
  rec.prompt_tokens = static_cast<int>(p.ids.size());
  const auto t0 = Clock::now();
  auto reader = gateway->Generate(&ctx, r);
  v1::GenerateResponse resp;
  while (reader->Read(&resp)) {
    if (resp.token_ids_size() > 0) {
      rec.chunk_times.push_back(Since(t0));
      rec.chunk_tokens.push_back(resp.token_ids_size());
    }
    if (resp.has_usage() && resp.usage().prompt_tokens() > 0) rec.prompt_tokens = resp.usage().prompt_tokens();
  }
  rec.code = reader->Finish().error_code();
  rec.end = Since(t0);
  return rec;
}

// The gRPC code of an HTTP status, for errors by status.
int CodeOfHttp(int status) {
  switch (status) {
    case 400: return static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT);
    case 401: return static_cast<int>(grpc::StatusCode::UNAUTHENTICATED);
    case 403: return static_cast<int>(grpc::StatusCode::PERMISSION_DENIED);
    case 404: return static_cast<int>(grpc::StatusCode::NOT_FOUND);
    case 429: return static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED);
    case 503: return static_cast<int>(grpc::StatusCode::UNAVAILABLE);
    default: return static_cast<int>(grpc::StatusCode::UNKNOWN);
  }
}

// Over the OpenAI-compatible HTTP API: POST /v1/completions, streamed as
// server-sent events. An event's token count is not on the wire: each
// counts one, and the last takes what the usage chunk says is left.
RequestRecord SendOpenAi(const std::string& host, int port, const BenchServeOptions& o, const std::string& model,
                         const BenchPrompt& p) {
  nlohmann::json body = {{"model", model},
                         {"max_tokens", p.output_len},
                         {"temperature", o.temperature},
                         {"ignore_eos", o.ignore_eos},
                         {"stream", true},
                         {"stream_options", {{"include_usage", true}}}};
  if (p.ids.empty()) {
    body["prompt"] = p.text;
  } else {
    body["prompt"] = p.ids;
  }
  httplib::Client client(host, port);
  client.set_read_timeout(3600);
  httplib::Headers headers;
  if (!o.api_key.empty()) headers.emplace("Authorization", "Bearer " + o.api_key);
  RequestRecord rec;
  rec.prompt_tokens = static_cast<int>(p.ids.size());
  int completion_tokens = -1;
  std::string pending;
  Clock::time_point t0;  // set as the request goes
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.headers = headers;
  req.set_header("Content-Type", "application/json");
  req.body = body.dump();
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    pending.append(data, n);
    for (size_t eol; (eol = pending.find("\n\n")) != std::string::npos; pending.erase(0, eol + 2)) {
      const std::string event = pending.substr(0, eol);
      if (event.rfind("data: ", 0) != 0 || event == "data: [DONE]") continue;
      nlohmann::json j = nlohmann::json::parse(event.substr(6), nullptr, false);
      if (j.is_discarded()) continue;
      if (j.contains("usage") && j["usage"].is_object()) {
        rec.prompt_tokens = j["usage"].value("prompt_tokens", rec.prompt_tokens);
        completion_tokens = j["usage"].value("completion_tokens", -1);
      }
      if (j.contains("choices") && j["choices"].is_array() && !j["choices"].empty() &&
          !j["choices"][0].value("text", std::string()).empty()) {
        rec.chunk_times.push_back(Since(t0));
        rec.chunk_tokens.push_back(1);
      }
    }
    return true;
  };
  httplib::Response res;
  httplib::Error error = httplib::Error::Success;
  t0 = Clock::now();
  const bool sent = client.send(req, res, error);
  rec.end = Since(t0);
  if (!sent) {
    rec.code = static_cast<int>(grpc::StatusCode::UNAVAILABLE);
  } else if (res.status != 200) {
    rec.code = CodeOfHttp(res.status);
  } else if (completion_tokens > 0 && !rec.chunk_tokens.empty()) {
    rec.chunk_tokens.back() += completion_tokens - rec.output_tokens();
  }
  return rec;
}

// The requests of one load point, their records in sending order.
class LoadPoint {
 public:
  // The warm-up sends warmup_prompts (so that what it caches is not what
  // the clock then measures), the load point `prompts`, in turn.
  LoadPoint(Send send, const BenchServeOptions& o, const std::vector<BenchPrompt>& prompts,
            const std::vector<BenchPrompt>& warmup_prompts)
      : send_(std::move(send)), o_(o), prompts_(prompts), warmup_prompts_(warmup_prompts) {}

  // `concurrency` > 0: that many in flight; else Poisson arrivals at `rate`.
  std::vector<RequestRecord> Run(int concurrency, double rate, StatusLine* status, const std::string& name,
                                 double* seconds) {
    // The warm-up, not recorded: connections and caches as in service.
    RunWorkers(std::max(1, concurrency > 0 ? concurrency : o_.max_concurrency), [this](int i) { return i < o_.warmup; },
               [this](int i) { send_(warmup_prompts_[static_cast<size_t>(i) % warmup_prompts_.size()]); });
    std::vector<RequestRecord> records;
    start_ = Clock::now();
    std::atomic<bool> done{false};
    std::thread progress([&] {
      while (!done) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        status->Set(absl::StrFormat("%s: %d requests, %lld tokens, %.0f s", name, finished_.load(),
                                    static_cast<long long>(tokens_.load()), Since(start_)));
      }
    });
    if (concurrency > 0) {
      RunWorkers(concurrency, [this](int i) { return Wanted(i); },
                 [&](int i) { Record(&records, i, send_(PromptFor(i))); });
    } else {
      RunPoisson(rate, &records);
    }
    done = true;
    progress.join();
    status->Clear();
    *seconds = Since(start_);
    return records;
  }

 private:
  // Whether request `i` (counting from 0 at the clock's start) is wanted.
  bool Wanted(int i) const {
    return o_.num_prompts > 0 ? i < o_.num_prompts : Since(start_) < o_.duration_s;
  }
  const BenchPrompt& PromptFor(int i) const { return prompts_[static_cast<size_t>(i) % prompts_.size()]; }

  void Record(std::vector<RequestRecord>* out, int i, RequestRecord r) {
    ++finished_;
    tokens_ += r.output_tokens();
    std::lock_guard<std::mutex> lock(mu_);
    if (out->size() <= static_cast<size_t>(i)) out->resize(i + 1);
    (*out)[i] = std::move(r);
  }

  // `workers` threads, each running request i (`run`), the next as its
  // last ends, while more(i).
  void RunWorkers(int workers, const std::function<bool(int)>& more, const std::function<void(int)>& run) {
    if (!more(0)) return;
    std::atomic<int> next{0};
    std::vector<std::thread> threads;
    for (int w = 0; w < workers; ++w) {
      threads.emplace_back([&] {
        for (int i = next++; more(i); i = next++) run(i);
      });
    }
    for (auto& t : threads) t.join();
  }

  // Arrivals at exponential gaps of mean 1 / rate (seeded); at most
  // max_concurrency in flight (an arrival past it waits for a place).
  void RunPoisson(double rate, std::vector<RequestRecord>* out) {
    std::mt19937_64 rng(o_.seed);
    std::exponential_distribution<double> gap(rate);
    std::vector<std::thread> threads;
    std::mutex mu;
    std::condition_variable cv;
    int in_flight = 0;
    double at = 0;
    for (int i = 0; o_.num_prompts > 0 ? i < o_.num_prompts : at < o_.duration_s; ++i) {
      std::this_thread::sleep_until(start_ + std::chrono::duration_cast<Clock::duration>(
                                                 std::chrono::duration<double>(at)));
      at += gap(rng);
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return o_.max_concurrency <= 0 || in_flight < o_.max_concurrency; });
        ++in_flight;
      }
      threads.emplace_back([&, i] {
        Record(out, i, send_(PromptFor(i)));
        std::lock_guard<std::mutex> lock(mu);
        --in_flight;
        cv.notify_one();
      });
    }
    for (auto& t : threads) t.join();
  }

  Send send_;
  const BenchServeOptions& o_;
  const std::vector<BenchPrompt>& prompts_;
  const std::vector<BenchPrompt>& warmup_prompts_;
  Clock::time_point start_;
  std::mutex mu_;
  std::atomic<int> finished_{0};
  std::atomic<int64_t> tokens_{0};
};

int Draw(std::mt19937_64& rng, int len, double ratio) {
  const int lo = std::max(1, static_cast<int>(len * (1 - ratio))), hi = std::max(lo, static_cast<int>(len * (1 + ratio)));
  return std::uniform_int_distribution<int>(lo, hi)(rng);
}

absl::Status CheckOptions(const BenchServeOptions& o) {
  if (o.target.empty()) return absl::InvalidArgumentError("--target HOST:PORT (the gateway) is required");
  if (o.concurrency.empty() == o.rates.empty()) {
    return absl::InvalidArgumentError("give exactly one of --concurrency N[,N...] and --request-rate R[,R...]");
  }
  for (int c : o.concurrency) {
    if (c < 1 || c > 4096) return absl::InvalidArgumentError("--concurrency must be in [1, 4096]");
  }
  for (double r : o.rates) {
    if (!(r > 0)) return absl::InvalidArgumentError("--request-rate must be > 0");
  }
  if ((o.num_prompts > 0) == (o.duration_s > 0)) {
    return absl::InvalidArgumentError("give exactly one of --num-prompts N and --duration-s S");
  }
  if (o.num_prompts < 0 || o.duration_s < 0 || o.warmup < 0 || o.max_concurrency < 0) {
    return absl::InvalidArgumentError("--num-prompts, --duration-s, --warmup and --max-concurrency must not be negative");
  }
  if (o.input_len < 1 || o.output_len < 1 || o.shared_prefix_len < 0) {
    return absl::InvalidArgumentError("--input-len and --output-len must be >= 1, --shared-prefix-len >= 0");
  }
  if (o.range_ratio < 0 || o.range_ratio >= 1) return absl::InvalidArgumentError("--range-ratio must be in [0, 1)");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<BenchPrompt>> RandomPrompts(const BenchServeOptions& o, const v1::ModelInfo& model,
                                                       size_t count, uint64_t stream) {
  const int longest_in = o.shared_prefix_len + static_cast<int>(o.input_len * (1 + o.range_ratio));
  const int longest_out = static_cast<int>(o.output_len * (1 + o.range_ratio));
  if (model.context_length() > 0 && longest_in + longest_out > model.context_length()) {
    return absl::InvalidArgumentError(absl::StrCat("prompts of up to ", longest_in, " tokens and outputs of up to ",
                                                   longest_out, " exceed the model's context length of ",
                                                   model.context_length()));
  }
  if (model.vocab_size() < 2) return absl::FailedPreconditionError("the gateway reports no vocabulary size");
  std::mt19937_64 prefix_rng(o.seed), rng(o.seed + 0x9e3779b97f4a7c15ULL * (stream + 1));
  std::uniform_int_distribution<int> id(1, model.vocab_size() - 1);
  std::vector<int> prefix(o.shared_prefix_len);
  for (int& t : prefix) t = id(prefix_rng);
  std::vector<BenchPrompt> out(count);
  for (BenchPrompt& p : out) {
    p.ids = prefix;
    for (int n = Draw(rng, o.input_len, o.range_ratio); n > 0; --n) p.ids.push_back(id(rng));
    p.output_len = Draw(rng, o.output_len, o.range_ratio);
  }
  return out;
}

absl::StatusOr<std::vector<BenchPrompt>> LoadBenchDataset(const std::string& path, int output_len) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("dataset ", path, " cannot be read"));
  std::vector<BenchPrompt> out;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto bad = [&](const std::string& why) {
      return absl::InvalidArgumentError(absl::StrCat("dataset ", path, " line ", n, ": ", why));
    };
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
    BenchPrompt p;
    p.output_len = output_len;
    if (j.contains("prompt") && j["prompt"].is_string() && !j["prompt"].get<std::string>().empty()) {
      p.text = j["prompt"].get<std::string>();
    } else if (j.contains("ids") && j["ids"].is_array() && !j["ids"].empty()) {
      for (const auto& t : j["ids"]) {
        if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > INT32_MAX) {
          return bad("\"ids\" must hold non-negative token ids");
        }
        p.ids.push_back(t.get<int>());
      }
    } else {
      return bad("needs a non-empty \"prompt\" (text) or \"ids\" (token ids)");
    }
    if (j.contains("output_len")) {
      if (!j["output_len"].is_number_integer() || j["output_len"].get<int64_t>() < 1 ||
          j["output_len"].get<int64_t>() > INT32_MAX) {
        return bad("\"output_len\" must be a positive integer");
      }
      p.output_len = j["output_len"].get<int>();
    }
    out.push_back(std::move(p));
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat("dataset ", path, " has no prompts"));
  return out;
}

namespace {

// The model to load, and how to send it a request, over `o.backend`.
absl::Status Connect(const BenchServeOptions& o, v1::ModelInfo* model, Send* send,
                     std::shared_ptr<v1::Gateway::Stub>* stub) {
  if (o.backend == "openai") {
    const size_t colon = o.target.rfind(':');
    int port = 0;
    if (colon == std::string::npos || !absl::SimpleAtoi(o.target.substr(colon + 1), &port)) {
      return absl::InvalidArgumentError(absl::StrCat("--target ", o.target, ": expected HOST:PORT"));
    }
    const std::string host = o.target.substr(0, colon);
    httplib::Client client(host, port);
    client.set_connection_timeout(std::chrono::milliseconds(o.timeout_ms));
    client.set_read_timeout(std::chrono::milliseconds(o.timeout_ms));
    httplib::Headers headers;
    if (!o.api_key.empty()) headers.emplace("Authorization", "Bearer " + o.api_key);
    auto res = client.Get("/v1/models", headers);
    if (!res) {
      return absl::UnavailableError(absl::StrCat("the HTTP API at ", o.target, " did not answer: ",
                                                 httplib::to_string(res.error())));
    }
    if (res->status != 200) {
      return absl::Status(static_cast<absl::StatusCode>(CodeOfHttp(res->status)),
                          absl::StrCat("GET /v1/models at ", o.target, ": HTTP ", res->status, " ", res->body));
    }
    nlohmann::json j = nlohmann::json::parse(res->body, nullptr, false);
    if (j.is_discarded() || !j.contains("data") || !j["data"].is_array()) {
      return absl::InternalError(absl::StrCat("GET /v1/models at ", o.target, " is not a model list"));
    }
    for (const auto& m : j["data"]) {
      if (!o.model.empty() && m.value("id", std::string()) != o.model) continue;
      model->set_name(m.value("id", std::string()));
      model->set_context_length(m.value("max_model_len", 0));
      model->set_vocab_size(m.value("vocab_size", 0));
      *send = [host, port, &o, name = model->name()](const BenchPrompt& p) {
        return SendOpenAi(host, port, o, name, p);
      };
      return absl::OkStatus();
    }
    return absl::NotFoundError(absl::StrCat("the HTTP API serves no model \"", o.model, "\""));
  }
  if (o.backend != "grpc") return absl::InvalidArgumentError("--backend must be grpc or openai");
  *stub = v1::Gateway::NewStub(
      grpc::CreateCustomChannel(o.target, MeshChannelCredentials(), ClientChannelArguments()));
  // The model, and whether the gateway is there at all.
  v1::ListModelsResponse models;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(o.timeout_ms));
  ctx.set_wait_for_ready(true);
  if (!o.api_key.empty()) ctx.AddMetadata("authorization", "Bearer " + o.api_key);
  grpc::Status st = (*stub)->ListModels(&ctx, v1::ListModelsRequest(), &models);
  if (!st.ok()) {
    return absl::Status(FromGrpcStatus(st).code(),
                        absl::StrCat("the gateway at ", o.target, " did not answer: ", st.error_message()));
  }
  for (const v1::ModelInfo& m : models.models()) {
    if (!o.model.empty() && m.name() != o.model) continue;
    *model = m;
    *send = [gateway = stub->get(), &o, name = m.name()](const BenchPrompt& p) {
      return SendGrpc(gateway, o, name, p);
    };
    return absl::OkStatus();
  }
  return absl::NotFoundError(absl::StrCat("the gateway serves no model \"", o.model, "\""));
}

}  // namespace

absl::StatusOr<std::vector<BenchSummary>> RunBenchServe(const BenchServeOptions& o, const ProgressOutput& progress) {
  if (absl::Status st = CheckOptions(o); !st.ok()) return st;
  v1::ModelInfo model;
  Send send;
  std::shared_ptr<v1::Gateway::Stub> stub;  // the gRPC backend's, alive while `send` is used
  if (absl::Status st = Connect(o, &model, &send, &stub); !st.ok()) return st;
  std::vector<BenchPrompt> dataset;
  if (!o.dataset.empty()) {
    absl::StatusOr<std::vector<BenchPrompt>> lines = LoadBenchDataset(o.dataset, o.output_len);
    if (!lines.ok()) return lines.status();
    dataset = std::move(*lines);
  }
  StatusLine status(progress);
  std::vector<BenchSummary> out;
  const size_t points = std::max(o.concurrency.size(), o.rates.size());
  for (size_t i = 0; i < points; ++i) {
    const int concurrency = o.concurrency.empty() ? 0 : o.concurrency[i];
    const double rate = o.rates.empty() ? 0 : o.rates[i];
    const std::string name = concurrency > 0 ? absl::StrCat("concurrency ", concurrency)
                                             : absl::StrFormat("rate %g/s", rate);
    // Random prompts of their own for each load point and for its warm-up,
    // so that no point is served from blocks an earlier one cached (the
    // shared prefix, when asked for, is shared by all); a dataset's lines
    // are the same for every point.
    std::vector<BenchPrompt> prompts = dataset, warmup = dataset;
    if (dataset.empty()) {
      const size_t count = o.num_prompts > 0 ? o.num_prompts : 4096;
      absl::StatusOr<std::vector<BenchPrompt>> drawn = RandomPrompts(o, model, count + std::max(o.warmup, 1), i);
      if (!drawn.ok()) return drawn.status();
      prompts.assign(drawn->begin(), drawn->begin() + count);
      warmup.assign(drawn->begin() + count, drawn->end());
    }
    LoadPoint point(send, o, prompts, warmup);
    double seconds = 0;
    std::vector<RequestRecord> records = point.Run(concurrency, rate, &status, name, &seconds);
    out.push_back(Summarize(name, records, seconds));
  }
  return out;
}

}  // namespace moemesh
