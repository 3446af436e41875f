#include "tools/moemesh/progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/common/file_util.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

namespace fs = std::filesystem;

constexpr char kClearLine[] = "\r\033[K";

std::string Seconds(absl::Duration d) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1fs", absl::ToDoubleSeconds(d));
  return buf;
}

}  // namespace

ProgressOutput ProgressOn(int fd) {
  ProgressOutput p;
  p.stream = fd == 1 ? &std::cout : &std::cerr;
  p.terminal = isatty(fd) == 1;
  winsize ws{};
  if (p.terminal && ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) p.columns = ws.ws_col;
  return p;
}

std::string FormatBytes(uint64_t bytes) {
  if (bytes < 1000) return absl::StrCat(bytes, " B");
  static const char* const kUnits[] = {"kB", "MB", "GB", "TB"};
  double v = static_cast<double>(bytes) / 1000;
  int unit = 0;
  while (v >= 999.95 && unit < 3) {
    v /= 1000;
    ++unit;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f %s", v, kUnits[unit]);
  return buf;
}

std::vector<std::string> WeightFiles(const std::string& model_dir) {
  std::vector<std::string> files;
  auto index = ReadFile(JoinPath(model_dir, "model.safetensors.index.json"));
  if (!index.ok()) {
    files.push_back(JoinPath(model_dir, "model.safetensors"));
    return files;
  }
  nlohmann::json j = nlohmann::json::parse(*index, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) return files;
  for (const auto& shard : j["weight_map"]) {
    if (!shard.is_string()) continue;
    std::string path = JoinPath(model_dir, shard.get<std::string>());
    if (std::find(files.begin(), files.end(), path) == files.end()) files.push_back(path);
  }
  return files;
}

uint64_t WeightFileBytes(const std::string& model_dir) {
  uint64_t total = 0;
  for (const std::string& f : WeightFiles(model_dir)) {
    std::error_code ec;
    const uintmax_t size = fs::file_size(f, ec);  // follows links (a Hugging Face cache links to blobs)
    if (!ec) total += size;
  }
  return total;
}

uint64_t MappedWeightBytes(const std::string& model_dir) {
  // The files as the kernel names them, links resolved.
  std::set<std::string> files;
  for (const std::string& f : WeightFiles(model_dir)) {
    std::error_code ec;
    fs::path p = fs::canonical(f, ec);
    if (!ec) files.insert(p.string());
  }
  if (files.empty()) return 0;
  std::ifstream smaps("/proc/self/smaps");
  uint64_t total = 0;
  bool in_weights = false;
  std::string line;
  while (std::getline(smaps, line)) {
    if (line.empty()) continue;
    if (absl::ascii_isxdigit(static_cast<unsigned char>(line[0])) && !absl::ascii_isupper(line[0])) {
      // "start-end perms offset dev inode   path": a new mapping.
      const size_t slash = line.find('/');
      in_weights = slash != std::string::npos && files.count(line.substr(slash)) > 0;
      continue;
    }
    if (in_weights && absl::StartsWith(line, "Rss:")) {
      uint64_t kb = 0;
      absl::string_view v = absl::StripAsciiWhitespace(absl::string_view(line).substr(4));
      if (absl::ConsumeSuffix(&v, " kB") && absl::SimpleAtoi(v, &kb)) total += kb * 1024;
    }
  }
  return total;
}

void StatusLine::Set(const std::string& text) {
  std::lock_guard<std::mutex> lock(mu_);
  if (out_.stream == nullptr || !out_.terminal) return;
  const size_t max = out_.columns > 1 ? static_cast<size_t>(out_.columns - 1) : 79;
  status_ = text.size() > max ? text.substr(0, max) : text;
  *out_.stream << kClearLine << status_ << std::flush;
}

void StatusLine::Print(const std::string& line) {
  std::lock_guard<std::mutex> lock(mu_);
  if (out_.stream == nullptr) return;
  if (out_.terminal && !status_.empty()) {
    *out_.stream << kClearLine << line << "\n" << status_ << std::flush;
  } else {
    *out_.stream << line << std::endl;
  }
}

void StatusLine::Clear() {
  std::lock_guard<std::mutex> lock(mu_);
  if (out_.stream == nullptr || !out_.terminal || status_.empty()) return;
  *out_.stream << kClearLine << std::flush;
  status_.clear();
}

absl::StatusOr<std::unique_ptr<Engine>> CreateEngineWithProgress(const std::string& model_dir,
                                                                 const EngineOptions& options,
                                                                 std::unique_ptr<ExpertExecutor> experts,
                                                                 const ProgressOutput& progress) {
  if (progress.stream == nullptr) return Engine::Create(model_dir, options, std::move(experts));
  const uint64_t total = WeightFileBytes(model_dir);
  const std::string what = absl::StrCat("model ", model_dir, " (", FormatBytes(total), " of weights)");
  const absl::Time start = absl::Now();
  if (!progress.terminal) {
    *progress.stream << "loading " << what << "..." << std::endl;
    auto engine = Engine::Create(model_dir, options, std::move(experts));
    if (engine.ok()) *progress.stream << "loaded in " << Seconds(absl::Now() - start) << std::endl;
    return engine;
  }
  StatusLine status(progress);
  auto show = [&] {
    const uint64_t read = std::min(MappedWeightBytes(model_dir), total);
    std::string text = absl::StrCat("loading model ", model_dir, ": ", FormatBytes(read), " of ", FormatBytes(total));
    if (total > 0) absl::StrAppend(&text, " (", read * 100 / total, "%)");
    absl::StrAppend(&text, ", ", Seconds(absl::Now() - start));
    status.Set(text);
  };
  show();
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::thread ticker([&] {
    std::unique_lock<std::mutex> lock(mu);
    while (!cv.wait_for(lock, std::chrono::milliseconds(500), [&] { return done; })) {
      lock.unlock();
      show();
      lock.lock();
    }
  });
  auto engine = Engine::Create(model_dir, options, std::move(experts));
  {
    std::lock_guard<std::mutex> lock(mu);
    done = true;
  }
  cv.notify_all();
  ticker.join();
  status.Clear();
  if (engine.ok()) status.Print(absl::StrCat("loaded ", what, " in ", Seconds(absl::Now() - start)));
  return engine;
}

}  // namespace moemesh
