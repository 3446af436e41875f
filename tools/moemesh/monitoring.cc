#include "tools/moemesh/monitoring.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "core/common/status_macros.h"
#include "core/common/tcp_connect.h"
#include "core/metrics/http_get.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

namespace fs = std::filesystem;

std::string OnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path ? path : "/usr/bin:/bin", ':', absl::SkipEmpty())) {
    fs::path p = fs::path(std::string(dir)) / name;
    if (access(p.c_str(), X_OK) == 0) return p.string();
  }
  return "";
}

absl::Status WriteText(const fs::path& p, const std::string& text) {
  std::ofstream out(p);
  out << text;
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", p.string()));
  return absl::OkStatus();
}

}  // namespace

std::string FindSourcePath(const std::string& rel) {
  if (fs::exists(rel)) return rel;
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  for (fs::path d = ec ? fs::path() : exe.parent_path(); !d.empty() && d != d.root_path(); d = d.parent_path()) {
    if (fs::exists(d / rel)) return (d / rel).string();
  }
  return "";
}

absl::StatusOr<std::unique_ptr<LocalPrometheus>> LocalPrometheus::Start(
    const Options& o, const std::map<std::string, std::vector<std::string>>& targets) {
  const std::string binary = o.binary.empty() ? OnPath("prometheus") : o.binary;
  if (binary.empty()) {
    return absl::NotFoundError("--monitoring needs Prometheus: install Debian's prometheus package (make deps)");
  }
  const std::string deploy = o.deploy_dir.empty() ? FindSourcePath("deploy/prometheus") : o.deploy_dir;
  if (deploy.empty() || !fs::exists(fs::path(deploy) / "prometheus.yml")) {
    return absl::NotFoundError("cannot find deploy/prometheus/prometheus.yml");
  }
  std::unique_ptr<LocalPrometheus> p(new LocalPrometheus);
  char tmpl[] = "/tmp/moemesh-prometheus-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return absl::InternalError("cannot create a directory for Prometheus");
  p->dir_ = tmpl;
  const fs::path dir(p->dir_);
  std::error_code ec;
  fs::copy(fs::path(deploy) / "rules", dir / "rules", fs::copy_options::recursive, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot copy the rules: ", ec.message()));
  std::ifstream in(fs::path(deploy) / "prometheus.yml");
  std::stringstream config;
  config << in.rdbuf();
  const std::string interval = absl::StrCat(o.scrape_interval_s, "s");
  MM_RETURN_IF_ERROR(WriteText(dir / "prometheus.yml",
                               absl::StrReplaceAll(config.str(), {{"scrape_interval: 5s", "scrape_interval: " + interval},
                                                                  {"evaluation_interval: 5s",
                                                                   "evaluation_interval: " + interval}})));
  fs::create_directories(dir / "targets");
  for (const char* kind : {"gateway", "router", "expert", "kvcache"}) {
    std::vector<std::string> quoted;
    auto it = targets.find(kind);
    if (it != targets.end()) {
      for (const std::string& t : it->second) quoted.push_back(absl::StrCat("\"", t, "\""));
    }
    MM_RETURN_IF_ERROR(WriteText(dir / "targets" / absl::StrCat(kind, ".json"),
                                 absl::StrCat("[{\"targets\": [", absl::StrJoin(quoted, ", "), "]}]\n")));
  }
  int port = o.port;
  if (port <= 0) {  // Prometheus cannot be told to pick one
    MM_ASSIGN_OR_RETURN(port, FreeLoopbackPort());
  }
  p->address_ = absl::StrCat(o.host, ":", port);
  MM_ASSIGN_OR_RETURN(p->process_,
                      Subprocess::Start({binary, "--config.file=" + (dir / "prometheus.yml").string(),
                                         "--storage.tsdb.path=" + (dir / "data").string(),
                                         "--web.listen-address=" + p->address_, "--log.level=warn"}));
  p->process_->ForwardOutput(2);
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (!HttpGet(o.host, port, "/-/ready").ok()) {
    if (p->process_->Poll() >= 0) return absl::UnavailableError("Prometheus exited at start (see its log above)");
    if (absl::Now() > deadline) return absl::DeadlineExceededError("Prometheus was not ready within 60 s");
    absl::SleepFor(absl::Milliseconds(50));
  }
  // Ready once every target has been scraped: counters then start from
  // their first values, and rate() sees everything that follows.
  size_t expected = 0;
  for (const auto& [kind, list] : targets) expected += list.size();
  for (;;) {
    auto body = HttpGet(o.host, port, "/api/v1/targets?state=active");
    if (body.ok()) {
      nlohmann::json j = nlohmann::json::parse(*body, nullptr, false);
      size_t up = 0;
      if (!j.is_discarded()) {
        for (const auto& t : j["data"]["activeTargets"]) up += t.value("health", "") == "up";
      }
      if (up >= expected) break;
    }
    if (absl::Now() > deadline) return absl::DeadlineExceededError("Prometheus did not scrape the mesh within 60 s");
    absl::SleepFor(absl::Milliseconds(100));
  }
  return p;
}

LocalPrometheus::~LocalPrometheus() {
  if (process_) process_->Stop();
  std::error_code ec;
  if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
}

}  // namespace moemesh
