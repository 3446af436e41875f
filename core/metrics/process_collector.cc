#include "core/metrics/process_collector.h"

#include <dirent.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include "prometheus/metric_family.h"

namespace moemesh {
namespace {

prometheus::MetricFamily One(const std::string& name, const std::string& help, prometheus::MetricType type,
                             double value) {
  prometheus::MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  prometheus::ClientMetric m;
  if (type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  f.metric.push_back(m);
  return f;
}

// Seconds since the epoch at which the machine booted.
double BootTime() {
  std::ifstream in("/proc/stat");
  std::string key;
  double value;
  while (in >> key) {
    if (key == "btime" && in >> value) return value;
    in.ignore(1 << 16, '\n');
  }
  return 0;
}

int OpenFds() {
  int n = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (readdir(d) != nullptr) ++n;
    closedir(d);
    n -= 3;  // ".", ".." and the directory's own descriptor
  }
  return n;
}

}  // namespace

std::vector<prometheus::MetricFamily> ProcessCollector::Collect() const {
  std::vector<prometheus::MetricFamily> out;
  std::ifstream stat("/proc/self/stat");
  std::string line;
  std::getline(stat, line);
  // Fields after the command name, which is in parentheses and may hold spaces.
  std::istringstream fields(line.substr(line.rfind(')') + 2));
  std::string f[22];
  for (int i = 0; i < 22 && fields >> f[i]; ++i) {
  }
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  // After the name: state(0) ... utime(11) stime(12) ... starttime(19) vsize(20) rss(21).
  const double cpu = (std::stod(f[11].empty() ? "0" : f[11]) + std::stod(f[12].empty() ? "0" : f[12])) / ticks;
  out.push_back(One("process_cpu_seconds_total", "User and system CPU time spent, in seconds.",
                    prometheus::MetricType::Counter, cpu));
  out.push_back(One("process_resident_memory_bytes", "Resident memory size in bytes.",
                    prometheus::MetricType::Gauge, std::stod(f[21].empty() ? "0" : f[21]) * page));
  out.push_back(One("process_virtual_memory_bytes", "Virtual memory size in bytes.", prometheus::MetricType::Gauge,
                    std::stod(f[20].empty() ? "0" : f[20])));
  out.push_back(One("process_start_time_seconds", "Start time of the process since the epoch, in seconds.",
                    prometheus::MetricType::Gauge, BootTime() + std::stod(f[19].empty() ? "0" : f[19]) / ticks));
  out.push_back(
      One("process_open_fds", "Number of open file descriptors.", prometheus::MetricType::Gauge, OpenFds()));
  return out;
}

}  // namespace moemesh
