#include "services/gateway/api_keys.h"

#include <algorithm>
#include <cmath>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "core/common/file_util.h"
#include "core/common/status_macros.h"
#include "nlohmann/json.hpp"

namespace moemesh {

absl::Status ApiKeys::Take(std::vector<Key> keys) {
  absl::flat_hash_set<std::string> seen;
  for (size_t i = 0; i < keys.size(); ++i) {
    const std::string where = absl::StrCat("keys[", i, "] (", keys[i].name, ")");
    if (keys[i].key.empty()) return absl::InvalidArgumentError(where + ": an empty key");
    if (!seen.insert(keys[i].key).second) return absl::InvalidArgumentError(where + ": a repeated key");
    if (keys[i].max_streams < 0 || keys[i].tokens_per_minute < 0) {
      return absl::InvalidArgumentError(where + ": limits must not be negative");
    }
  }
  absl::MutexLock lock(&mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<State>> next;
  for (Key& k : keys) {
    auto old = by_key_.find(k.key);
    std::shared_ptr<State> s = old != by_key_.end() ? old->second : std::make_shared<State>();
    if (old == by_key_.end()) {
      s->bucket = static_cast<double>(k.tokens_per_minute);
      s->refilled = now_();
    } else {
      s->bucket = std::min(s->bucket, static_cast<double>(k.tokens_per_minute));
    }
    s->key = std::move(k);
    next.emplace(s->key.key, std::move(s));
  }
  by_key_ = std::move(next);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ApiKeys>> ApiKeys::FromKeys(std::vector<Key> keys) {
  std::unique_ptr<ApiKeys> out(new ApiKeys());
  MM_RETURN_IF_ERROR(out->Take(std::move(keys)));
  return out;
}

absl::StatusOr<std::vector<ApiKeys::Key>> ApiKeys::Parse(const std::string& path) {
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
  return keys;
}

absl::StatusOr<std::unique_ptr<ApiKeys>> ApiKeys::Load(const std::string& path) {
  MM_ASSIGN_OR_RETURN(std::vector<Key> keys, Parse(path));
  absl::StatusOr<std::unique_ptr<ApiKeys>> out = FromKeys(std::move(keys));
  if (!out.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", out.status().message()));
  return out;
}

absl::Status ApiKeys::Reload(const std::string& path) {
  MM_ASSIGN_OR_RETURN(std::vector<Key> keys, Parse(path));
  absl::Status st = Take(std::move(keys));
  if (!st.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", st.message()));
  return absl::OkStatus();
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
  absl::MutexLock lock(&mu_);
  auto it = by_key_.find(key);
  if (it == by_key_.end()) return absl::UnauthenticatedError("this API key is not known here");
  State& s = *it->second;
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
  --state_->streams;
}

void ApiKeys::Lease::Charge(int64_t tokens) {
  absl::MutexLock lock(&keys_->mu_);
  keys_->Refill(*state_);
  if (state_->key.tokens_per_minute > 0) state_->bucket -= static_cast<double>(tokens);
}

}  // namespace moemesh
