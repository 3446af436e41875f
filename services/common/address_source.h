#ifndef MOEMESH_SERVICES_COMMON_ADDRESS_SOURCE_H_
#define MOEMESH_SERVICES_COMMON_ADDRESS_SOURCE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace moemesh {

// Where a service's peers are found, asked again and again so that they may
// come and go while it serves (a router's expert replicas, a gateway's
// routers: RemoteExpertExecutor and RouterPool re-resolve on a period):
//   "dns:///NAME:PORT"  every address NAME resolves to (A and AAAA
//                       records: a Kubernetes headless Service), at PORT
//   "file:PATH"         the addresses listed in the file (HOST:PORT,
//                       separated by newlines, spaces or '|'; '#' starts a
//                       comment), read afresh each time
// A fixed list of addresses (the plain form of --experts, --routers) is not
// one.
class AddressSource {
 public:
  virtual ~AddressSource() = default;
  // Whether `spec` names a source (dns:/// or file:) rather than an address.
  static bool IsSource(const std::string& spec);
  // INVALID_ARGUMENT for a malformed spec.
  static absl::StatusOr<std::unique_ptr<AddressSource>> Parse(const std::string& spec);

  // The addresses now, sorted, without duplicates. UNAVAILABLE when the
  // name does not resolve or the file cannot be read: the caller keeps
  // what it has.
  virtual absl::StatusOr<std::vector<std::string>> Resolve() const = 0;
  const std::string& spec() const { return spec_; }

 protected:
  explicit AddressSource(std::string spec) : spec_(std::move(spec)) {}

 private:
  std::string spec_;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_COMMON_ADDRESS_SOURCE_H_
