#include "core/metrics/http_get.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace moemesh {

absl::StatusOr<std::string> HttpGet(const std::string& host, int port, const std::string& path) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot resolve ", host));
  }
  int fd = -1;
  for (addrinfo* a = res; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(res);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("cannot connect to ", host, ":", port));
  const std::string req = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: ", host, ":", port, "\r\n\r\n");
  size_t sent = 0;
  while (sent < req.size()) {
    ssize_t n = write(fd, req.data() + sent, req.size() - sent);
    if (n <= 0) {
      close(fd);
      return absl::UnavailableError(absl::StrCat("lost ", host, ":", port));
    }
    sent += static_cast<size_t>(n);
  }
  std::string resp;
  char buf[16384];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) resp.append(buf, static_cast<size_t>(n));
  close(fd);
  const size_t body = resp.find("\r\n\r\n");
  const std::string status = resp.substr(0, resp.find("\r\n"));
  if (body == std::string::npos || !absl::StrContains(status, " 200")) {
    return absl::InternalError(absl::StrCat("GET ", path, " from ", host, ":", port, ": ", status));
  }
  return resp.substr(body + 4);
}

std::string UrlEncode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      char hex[4];
      std::snprintf(hex, sizeof hex, "%%%02X", c);
      out += hex;
    }
  }
  return out;
}

}  // namespace moemesh
