#ifndef MOEMESH_SERVICES_GATEWAY_API_KEYS_H_
#define MOEMESH_SERVICES_GATEWAY_API_KEYS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

namespace moemesh {

// API keys of the public API (the gateway's --api-keys FILE;
// docs/OPERATIONS.md, "Authentication"), each with its own limits: streams
// at once, and tokens (prompt and completion) per minute as a bucket that
// refills continuously. A call presents "Bearer KEY" (gRPC metadata
// `authorization`, the HTTP Authorization header) and is admitted, or
// refused before any router sees it:
//   UNAUTHENTICATED    no key, or not one of these;
//   PERMISSION_DENIED  a key that may not use this model;
//   RESOURCE_EXHAUSTED the key's streams or tokens per minute are used up
//                      (the message says when to retry).
// Thread-safe.
class ApiKeys {
 public:
  struct Key {
    std::string name;  // for messages and logs; never the key itself
    std::string key;
    int max_streams = 0;            // 0: no limit
    int64_t tokens_per_minute = 0;  // 0: no limit
    std::vector<std::string> models;  // empty: every model
  };

  // A JSON file: {"keys": [{"name", "key", "max_streams", "tokens_per_minute",
  // "models"}]}. INVALID_ARGUMENT naming the entry for a malformed one, an
  // empty or repeated key.
  static absl::StatusOr<std::unique_ptr<ApiKeys>> Load(const std::string& path);
  static absl::StatusOr<std::unique_ptr<ApiKeys>> FromKeys(std::vector<Key> keys);
  // Reads the file again and takes its keys: a key still there keeps its
  // running streams and bucket (and its new limits apply); a removed key
  // admits no new call (calls in progress finish). On an error the keys
  // stay as they were.
  absl::Status Reload(const std::string& path);

  // An admitted call: holds one of its key's streams until destroyed, and
  // charges the tokens it used.
  struct State;
  class Lease {
   public:
    ~Lease();
    void Charge(int64_t tokens);

   private:
    friend class ApiKeys;
    Lease(ApiKeys* keys, std::shared_ptr<State> state) : keys_(keys), state_(std::move(state)) {}
    ApiKeys* keys_;
    std::shared_ptr<State> state_;
  };

  // Admits a call with `authorization` ("Bearer KEY") to `model`.
  absl::StatusOr<std::unique_ptr<Lease>> Admit(absl::string_view authorization, absl::string_view model);

  // For tests: the clock the token buckets refill by.
  void set_clock(absl::Time (*now)()) { now_ = now; }

  // A key's limits and use; shared with its leases, so that a reload can
  // drop the key while its calls finish.
  struct State {
    Key key;
    int streams = 0;
    double bucket = 0;  // tokens left; may go below zero after a long answer
    absl::Time refilled;
  };

 private:
  ApiKeys() = default;
  static absl::StatusOr<std::vector<Key>> Parse(const std::string& path);
  // Takes `keys` (checked), keeping the state of keys already known.
  absl::Status Take(std::vector<Key> keys);
  void Refill(State& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Time (*now_)() = &absl::Now;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<State>> by_key_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_GATEWAY_API_KEYS_H_
