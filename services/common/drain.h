#ifndef MOEMESH_SERVICES_COMMON_DRAIN_H_
#define MOEMESH_SERVICES_COMMON_DRAIN_H_

#include "absl/status/status.h"

namespace moemesh {

// Whether this process is draining (ServiceMain sets it at SIGTERM, with
// health going NOT_SERVING): calls already in progress finish, new ones are
// refused with UNAVAILABLE, which clients retry elsewhere (the gateway on
// the next router, before anything was sent).
bool Draining();
void SetDraining(bool draining);

// UNAVAILABLE naming `service` while draining, else OK.
absl::Status RefuseWhileDraining(const char* service);

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_COMMON_DRAIN_H_
