#ifndef MOEMESH_CORE_METRICS_HTTP_GET_H_
#define MOEMESH_CORE_METRICS_HTTP_GET_H_

#include <string>

#include "absl/status/statusor.h"

namespace moemesh {

// A minimal HTTP/1.0 GET of http://host:port/path, for scraping /metrics
// and querying a local Prometheus in tests and tools. Returns the body of
// a 200 answer; UNAVAILABLE when the server cannot be reached, INTERNAL
// with the status line otherwise. No TLS, no redirects, no chunked bodies
// (HTTP/1.0 servers close the connection instead).
absl::StatusOr<std::string> HttpGet(const std::string& host, int port, const std::string& path);

// Percent-encodes a query parameter value.
std::string UrlEncode(const std::string& s);

}  // namespace moemesh

#endif  // MOEMESH_CORE_METRICS_HTTP_GET_H_
