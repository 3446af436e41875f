#include "services/gateway/api_keys.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "core/common/file_util.h"
#include "core/common/status_macros.h"
#include "nlohmann/json.hpp"

namespace moemesh {

ApiKeys::ApiKeys(std::vector<State> states) : states_(std::move(states)) {
  for (size_t i = 0; i < states_.size(); ++i) by_key_[states_[i].key.key] = i;
}

absl::StatusOr<std::unique_ptr<ApiKeys>> ApiKeys::FromKeys(std::vector<Key> keys) {
  std::vector<State> states;
  absl::flat_hash_map<std::string, size_t> seen;
  for (size_t i = 0; i < keys.size(); ++i) {
    const std::string where = absl::StrCat("keys[", i, "] (", keys[i].name, ")");
    if (keys[i].key.empty()) return absl::InvalidArgumentError(where + ": an empty key");
    if (!seen.emplace(keys[i].key, i).second) return absl::InvalidArgumentError(where + ": a repeated key");
    if (keys[i].max_streams < 0 || keys[i].tokens_per_minute < 0) {
      return absl::InvalidArgumentError(where + ": limits must not be negative");
    }
    State s;
    s.key = std::move(keys[i]);
    s.bucket = static_cast<double>(s.key.tokens_per_minute);
    s.refilled = absl::Now();
    states.push_back(std::move(s));
  }
  return std::unique_ptr<ApiKeys>(new ApiKeys(std::move(states)));
}

absl::StatusOr<std::unique_ptr<ApiKeys>> ApiKeys::Load(const std::string& path) {
  MM_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("keys") || !j["keys"].is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": expected {\"keys\": [{\"name\", \"key\", ...}]}"));
  }
  std::vector<Key> keys;
  for (size_t i = 0; i < j["keys"].size(); ++i) {
    const nlohmann::json& e = j["keys"][i];
    const std::string where = absl::StrCat(path, ": keys[", i, "]");
    if (!e.is_object() || !e.contains("key") || !e["key"].is_string()) {
      return absl::InvalidArgumentError(where + ": an object with a string \"key\" is required");
    }
    Key k;
    k.key = e["key"].get<std::string>();
    k.name = e.contains("name") && e["name"].is_string() ? e["name"].get<std::string>() : absl::StrCat("key ", i);
    for (const char* field : {"max_streams", "tokens_per_minute"}) {
      if (e.contains(field) && !e[field].is_number_integer()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ".", field, ": must be an integer"));
      }
    }
    k.max_streams = e.value("max_streams", 0);
    k.tokens_per_minute = e.value("tokens_per_minute", int64_t{0});
    if (e.contains("models")) {
      if (!e["models"].is_array()) return absl::InvalidArgumentError(where + ".models: must be a list of names");
      for (const auto& m : e["models"]) {
        if (!m.is_string()) return absl::InvalidArgumentError(where + ".models: must be a list of names");
        k.models.push_back(m.get<std::string>());
      }
    }
    keys.push_back(std::move(k));
  }
  absl::StatusOr<std::unique_ptr<ApiKeys>> out = FromKeys(std::move(keys));
  if (!out.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", out.status().message()));
  return out;
}

void ApiKeys::Refill(State& s) {
  const absl::Time now = now_();
  if (s.key.tokens_per_minute > 0) {
    const double per_second = static_cast<double>(s.key.tokens_per_minute) / 60.0;
    s.bucket = std::min(static_cast<double>(s.key.tokens_per_minute),
                        s.bucket + std::max(0.0, absl::ToDoubleSeconds(now - s.refilled)) * per_second);
  }
  s.refilled = now;
}

absl::StatusOr<std::unique_ptr<ApiKeys::Lease>> ApiKeys::Admit(absl::string_view authorization,
                                                               absl::string_view model) {
  absl::string_view key = authorization;
  if (!absl::ConsumePrefix(&key, "Bearer ") && !absl::ConsumePrefix(&key, "bearer ")) {
    return absl::UnauthenticatedError(
        authorization.empty() ? "an API key is required: send \"authorization: Bearer KEY\""
                              : "the authorization must be \"Bearer KEY\"");
  }
  key = absl::StripAsciiWhitespace(key);
  auto it = by_key_.find(key);
  if (it == by_key_.end()) return absl::UnauthenticatedError("this API key is not known here");
  absl::MutexLock lock(&mu_);
  State& s = states_[it->second];
  if (!s.key.models.empty() && std::find(s.key.models.begin(), s.key.models.end(), model) == s.key.models.end()) {
    return absl::PermissionDeniedError(absl::StrCat("API key '", s.key.name, "' may not use model '", model, "'"));
  }
  if (s.key.max_streams > 0 && s.streams >= s.key.max_streams) {
    return absl::ResourceExhaustedError(absl::StrCat("API key '", s.key.name, "' has its ", s.key.max_streams,
                                                     " streams running; retry when one ends"));
  }
  Refill(s);
  if (s.key.tokens_per_minute > 0 && s.bucket <= 0) {
    const double wait = -s.bucket / (static_cast<double>(s.key.tokens_per_minute) / 60.0) + 1;
    return absl::ResourceExhaustedError(absl::StrCat("API key '", s.key.name, "' used its ", s.key.tokens_per_minute,
                                                     " tokens per minute; retry in ",
                                                     static_cast<int64_t>(std::ceil(wait)), " s"));
  }
  ++s.streams;
  return std::unique_ptr<Lease>(new Lease(this, it->second));
}

ApiKeys::Lease::~Lease() {
  absl::MutexLock lock(&keys_->mu_);
  --keys_->states_[index_].streams;
}

void ApiKeys::Lease::Charge(int64_t tokens) {
  absl::MutexLock lock(&keys_->mu_);
  State& s = keys_->states_[index_];
  keys_->Refill(s);
  if (s.key.tokens_per_minute > 0) s.bucket -= static_cast<double>(tokens);
}

const std::string& ApiKeys::Lease::key_name() const { return keys_->states_[index_].key.name; }

}  // namespace moemesh
