#include "services/common/drain.h"

#include <atomic>

#include "absl/strings/str_cat.h"

namespace moemesh {
namespace {

std::atomic<bool> draining{false};

}  // namespace

bool Draining() { return draining.load(std::memory_order_relaxed); }

void SetDraining(bool d) { draining.store(d, std::memory_order_relaxed); }

absl::Status RefuseWhileDraining(const char* service) {
  if (!Draining()) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(service, " is shutting down; send the call to another one"));
}

}  // namespace moemesh
