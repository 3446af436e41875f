// Single-thread encode throughput of moemesh's tokenizer against the Hugging
// Face tokenizers library on the same documents, in the same run.
//
//   build/bench/tokenizer_bench [--docs FILE.jsonl] [TOKENIZER_JSON ...]
//
// Documents are {"text": ...} lines, encoded one by one (as requests
// arrive); by default bench/make_bench_text.sh assembles a few MB of English
// and Chinese fortunes and C++ code. The Hugging Face side runs in Node
// (tools/hf_tokenizers/bench.js) with RAYON_NUM_THREADS=1; both print a
// checksum of all ids, which must agree.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "core/tokenizer/batch_encode.h"
#include "core/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string Checksum(const std::vector<std::vector<int>>& all) {
  const unsigned __int128 m = (static_cast<unsigned __int128>(1) << 61) - 1;
  unsigned __int128 h = 0;
  for (const auto& ids : all) {
    for (int id : ids) h = (h * 1000003 + static_cast<unsigned>(id) + 1) % m;
    h = (h * 1000003 + 7) % m;
  }
  return std::to_string(static_cast<unsigned long long>(h));
}

std::string RunCommand(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  pclose(p);
  return out;
}

int Main(int argc, char** argv) {
  std::string docs_path = "/tmp/moemesh_tokenizer_bench.jsonl";
  std::vector<std::string> tokenizers;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--docs" && i + 1 < argc) {
      docs_path = argv[++i];
    } else {
      tokenizers.push_back(a);
    }
  }
  if (tokenizers.empty()) {
    tokenizers = {"models/fortune-moe/tokenizer.json", "tests/fixtures/tokenizers/llama3.json",
                  "tests/fixtures/tokenizers/qwen2.json", "tests/fixtures/tokenizers/llama2.json"};
  }
  std::ifstream in(docs_path);
  if (!in) {
    if (std::system(("bash bench/make_bench_text.sh " + docs_path).c_str()) != 0) {
      std::fprintf(stderr, "cannot assemble the benchmark text (bench/make_bench_text.sh)\n");
      return 1;
    }
    in.open(docs_path);
  }
  std::vector<std::string> docs;
  size_t bytes = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    docs.push_back(nlohmann::json::parse(line)["text"].get<std::string>());
    bytes += docs.back().size();
  }
  if (docs.empty()) {
    std::fprintf(stderr, "no documents in %s\n", docs_path.c_str());
    return 1;
  }
  std::printf("%zu documents, %.2f MB of English, Chinese and code\n", docs.size(), bytes / 1e6);
  std::printf("%-40s %12s %12s %8s %10s %16s\n", "tokenizer", "moemesh MB/s", "HF MB/s", "ratio", "same ids",
              "batch, 2 threads");
  std::vector<double> batch_mbs;
  for (const std::string& path : tokenizers) {
    auto tok = LoadTokenizer(path);
    if (!tok.ok()) {
      std::fprintf(stderr, "%s\n", std::string(tok.status().message()).c_str());
      return 1;
    }
    double best = 1e30;
    std::vector<std::vector<int>> all;
    for (int rep = 0; rep < 3; ++rep) {
      std::vector<std::vector<int>> out;
      out.reserve(docs.size());
      double t0 = Now();
      for (const std::string& d : docs) {
        auto ids = (*tok)->Encode(d, false);
        if (!ids.ok()) return 1;
        out.push_back(std::move(*ids));
      }
      double dt = Now() - t0;
      if (dt < best) {
        best = dt;
        all = std::move(out);
      }
    }
    std::string ours = Checksum(all);
    // The batch API on two threads, beside: the same ids.
    double t0 = Now();
    auto batch = EncodeBatch(**tok, docs, false, 2);
    const double batch_s = Now() - t0;
    if (!batch.ok() || Checksum(*batch) != ours) {
      std::fprintf(stderr, "EncodeBatch disagrees with Encode\n");
      return 1;
    }
    batch_mbs.push_back(bytes / batch_s / 1e6);
    std::string hf_json = RunCommand("RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false node tools/hf_tokenizers/bench.js " +
                                     path + " " + docs_path);
    auto hf = nlohmann::json::parse(hf_json, nullptr, false);
    if (hf.is_discarded()) {
      std::printf("%-40s %12.2f %12s %8s %10s %16.2f\n", path.c_str(), bytes / best / 1e6, "(node failed)", "", "",
                  batch_mbs.back());
      continue;
    }
    double hf_mbs = bytes / hf["seconds"].get<double>() / 1e6;
    double our_mbs = bytes / best / 1e6;
    std::printf("%-40s %12.2f %12.2f %8.2f %10s %16.2f\n", path.c_str(), our_mbs, hf_mbs, our_mbs / hf_mbs,
                hf["checksum"].get<std::string>() == ours ? "yes" : "NO", batch_mbs.back());
  }
  return 0;
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) { return moemesh::Main(argc, argv); }
