#include "services/common/address_source.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/common/file_util.h"

namespace moemesh {
namespace {

constexpr char kDns[] = "dns:///";
constexpr char kFile[] = "file:";

std::vector<std::string> Sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return v;
}

class DnsSource : public AddressSource {
 public:
  DnsSource(std::string spec, std::string name, std::string port)
      : AddressSource(std::move(spec)), name_(std::move(name)), port_(std::move(port)) {}

  absl::StatusOr<std::vector<std::string>> Resolve() const override {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    if (int rc = getaddrinfo(name_.c_str(), port_.c_str(), &hints, &found); rc != 0) {
      return absl::UnavailableError(absl::StrCat(spec(), ": ", gai_strerror(rc)));
    }
    std::vector<std::string> out;
    for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
      char host[INET6_ADDRSTRLEN] = {};
      const void* addr = a->ai_family == AF_INET ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr)
                                                 : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr);
      if (inet_ntop(a->ai_family, addr, host, sizeof host) == nullptr) continue;
      out.push_back(a->ai_family == AF_INET6 ? absl::StrCat("[", host, "]:", port_) : absl::StrCat(host, ":", port_));
    }
    freeaddrinfo(found);
    return Sorted(std::move(out));
  }

 private:
  std::string name_, port_;
};

class FileSource : public AddressSource {
 public:
  FileSource(std::string spec, std::string path) : AddressSource(std::move(spec)), path_(std::move(path)) {}

  absl::StatusOr<std::vector<std::string>> Resolve() const override {
    absl::StatusOr<std::string> text = ReadFile(path_);
    if (!text.ok()) return absl::UnavailableError(absl::StrCat(spec(), ": ", text.status().message()));
    std::vector<std::string> out;
    for (absl::string_view line : absl::StrSplit(*text, '\n')) {
      line = line.substr(0, line.find('#'));
      for (absl::string_view a : absl::StrSplit(line, absl::ByAnyChar(" \t|\r"), absl::SkipEmpty())) {
        out.emplace_back(a);
      }
    }
    return Sorted(std::move(out));
  }

 private:
  std::string path_;
};

}  // namespace

bool AddressSource::IsSource(const std::string& spec) {
  return absl::StartsWith(spec, kDns) || absl::StartsWith(spec, kFile);
}

absl::StatusOr<std::unique_ptr<AddressSource>> AddressSource::Parse(const std::string& spec) {
  absl::string_view rest = spec;
  if (absl::ConsumePrefix(&rest, kDns)) {
    const size_t colon = rest.rfind(':');
    int port = 0;
    if (colon == absl::string_view::npos || colon == 0 || !absl::SimpleAtoi(rest.substr(colon + 1), &port) ||
        port < 1 || port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat("\"", spec, "\": expected dns:///NAME:PORT"));
    }
    return std::unique_ptr<AddressSource>(
        new DnsSource(spec, std::string(rest.substr(0, colon)), std::string(rest.substr(colon + 1))));
  }
  if (absl::ConsumePrefix(&rest, kFile)) {
    if (rest.empty()) return absl::InvalidArgumentError(absl::StrCat("\"", spec, "\": expected file:PATH"));
    return std::unique_ptr<AddressSource>(new FileSource(spec, std::string(rest)));
  }
  return absl::InvalidArgumentError(absl::StrCat("\"", spec, "\" is not dns:///NAME:PORT or file:PATH"));
}

}  // namespace moemesh
