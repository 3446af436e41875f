#include "core/metrics/http_get.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/common/tcp_connect.h"

namespace moemesh {

absl::StatusOr<std::string> HttpGet(const std::string& host, int port, const std::string& path) {
  absl::StatusOr<int> conn = TcpConnect(host, port);
  if (!conn.ok()) return conn.status();
  const int fd = *conn;
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
