#include "core/experts/placement.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/common/file_util.h"
#include "core/common/status_macros.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

// Fills table[layer] from one [[experts of shard 0], [experts of shard 1], ...].
absl::Status FillLayer(const nlohmann::json& shards, int layer, int num_shards, int num_experts,
                       const std::string& where, std::vector<int>* row) {
  if (!shards.is_array() || static_cast<int>(shards.size()) != num_shards) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": expected a list of ", num_shards, " shards, each a list of expert ids"));
  }
  row->assign(num_experts, -1);
  for (int s = 0; s < num_shards; ++s) {
    if (!shards[s].is_array()) return absl::InvalidArgumentError(absl::StrCat(where, ": shard ", s, " is not a list"));
    for (const nlohmann::json& e : shards[s]) {
      if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<int64_t>() >= num_experts) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": shard ", s, " lists ", e.dump(),
                                                       ", not an expert id in [0, ", num_experts, ")"));
      }
      int id = e.get<int>();
      if ((*row)[id] != -1) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": expert ", id, " is on shards ", (*row)[id], " and ", s, " (layer ", layer, ")"));
      }
      (*row)[id] = s;
    }
  }
  for (int e = 0; e < num_experts; ++e) {
    if ((*row)[e] == -1) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": expert ", e, " of layer ", layer, " is on no shard"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ShardPlacement> ShardPlacement::Load(const std::string& path, int num_layers, int num_experts) {
  MM_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return Parse(text, path, num_layers, num_experts);
}

absl::StatusOr<ShardPlacement> ShardPlacement::Parse(const std::string& text, const std::string& origin,
                                                     int num_layers, int num_experts) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": not a JSON object"));
  }
  if (!j.contains("shards") || !j["shards"].is_array() || j["shards"].empty()) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": \"shards\" must list the experts of each shard"));
  }
  ShardPlacement p(static_cast<int>(j["shards"].size()));
  MM_RETURN_IF_ERROR(Validate(0, p.num_shards_, num_experts));
  p.table_.resize(num_layers);
  for (int l = 0; l < num_layers; ++l) {
    MM_RETURN_IF_ERROR(FillLayer(j["shards"], l, p.num_shards_, num_experts, absl::StrCat(origin, ": shards"),
                                 &p.table_[l]));
  }
  if (j.contains("layers")) {
    if (!j["layers"].is_object()) return absl::InvalidArgumentError(absl::StrCat(origin, ": \"layers\" must be an object"));
    for (const auto& [key, shards] : j["layers"].items()) {
      int layer;
      if (!absl::SimpleAtoi(key, &layer) || layer < 0 || layer >= num_layers) {
        return absl::InvalidArgumentError(
            absl::StrCat(origin, ": layers: \"", key, "\" is not a layer index in [0, ", num_layers, ")"));
      }
      MM_RETURN_IF_ERROR(FillLayer(shards, layer, p.num_shards_, num_experts,
                                   absl::StrCat(origin, ": layers[", key, "]"), &p.table_[layer]));
    }
  }
  return p;
}

std::vector<int> ShardPlacement::ExpertsOf(int shard, int layer, int num_experts) const {
  std::vector<int> out;
  for (int e = 0; e < num_experts; ++e) {
    if (ShardOf(layer, e) == shard) out.push_back(e);
  }
  return out;
}

absl::Status ShardPlacement::Validate(int shard_index, int num_shards, int num_experts) {
  if (num_shards < 1 || num_shards > num_experts) {
    return absl::InvalidArgumentError(
        absl::StrCat("--num-shards must be in [1, ", num_experts, "] (the expert count), got ", num_shards));
  }
  if (shard_index < 0 || shard_index >= num_shards) {
    return absl::InvalidArgumentError(
        absl::StrCat("--shard-index must be in [0, ", num_shards, "), got ", shard_index));
  }
  return absl::OkStatus();
}

}  // namespace moemesh
