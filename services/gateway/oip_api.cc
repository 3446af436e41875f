#include "services/gateway/oip_api.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

using Json = nlohmann::json;

absl::Status Bad(const std::string& input, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(input, ": ", what));
}

// A BYTES tensor's elements as raw contents: each a 4-byte little-endian
// length, then the bytes.
absl::StatusOr<std::vector<std::string>> SplitRawBytes(const std::string& raw, const std::string& input) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < raw.size()) {
    if (raw.size() - pos < 4) return Bad(input, "raw BYTES contents end inside an element's length");
    const uint32_t n = static_cast<uint8_t>(raw[pos]) | static_cast<uint32_t>(static_cast<uint8_t>(raw[pos + 1])) << 8 |
                       static_cast<uint32_t>(static_cast<uint8_t>(raw[pos + 2])) << 16 |
                       static_cast<uint32_t>(static_cast<uint8_t>(raw[pos + 3])) << 24;
    pos += 4;
    if (raw.size() - pos < n) return Bad(input, "raw BYTES contents end inside an element");
    out.push_back(raw.substr(pos, n));
    pos += n;
  }
  return out;
}

std::string JoinRawBytes(const std::string& element) {
  const uint32_t n = static_cast<uint32_t>(element.size());
  std::string out = {static_cast<char>(n & 0xff), static_cast<char>((n >> 8) & 0xff),
                     static_cast<char>((n >> 16) & 0xff), static_cast<char>((n >> 24) & 0xff)};
  return out + element;
}

// The one element of input `i`, from its contents or the raw contents.
absl::StatusOr<std::string> OneBytes(const inference::ModelInferRequest& r, int i) {
  const auto& in = r.inputs(i);
  if (in.datatype() != "BYTES") return Bad(in.name(), absl::StrCat("must be BYTES, not ", in.datatype()));
  std::vector<std::string> elements;
  if (r.raw_input_contents_size() > 0) {
    if (i >= r.raw_input_contents_size()) return Bad(in.name(), "has no raw contents");
    MM_ASSIGN_OR_RETURN(elements, SplitRawBytes(r.raw_input_contents(i), in.name()));
  } else {
    elements.assign(in.contents().bytes_contents().begin(), in.contents().bytes_contents().end());
  }
  if (elements.size() != 1) return Bad(in.name(), absl::StrCat("must hold one element, not ", elements.size()));
  return elements[0];
}

absl::StatusOr<bool> OneBool(const inference::ModelInferRequest& r, int i) {
  const auto& in = r.inputs(i);
  if (in.datatype() != "BOOL") return Bad(in.name(), absl::StrCat("must be BOOL, not ", in.datatype()));
  if (r.raw_input_contents_size() > 0) {
    if (i >= r.raw_input_contents_size() || r.raw_input_contents(i).size() != 1) {
      return Bad(in.name(), "must hold one element");
    }
    return r.raw_input_contents(i)[0] != 0;
  }
  if (in.contents().bool_contents_size() != 1) return Bad(in.name(), "must hold one element");
  return in.contents().bool_contents(0);
}

Json ParameterJson(const inference::InferParameter& p) {
  switch (p.parameter_choice_case()) {
    case inference::InferParameter::kBoolParam: return p.bool_param();
    case inference::InferParameter::kInt64Param: return p.int64_param();
    case inference::InferParameter::kStringParam: return p.string_param();
    case inference::InferParameter::kDoubleParam: return p.double_param();
    case inference::InferParameter::kUint64Param: return p.uint64_param();
    default: return nullptr;
  }
}

}  // namespace

absl::StatusOr<InferRequest> ParseInferRequest(const inference::ModelInferRequest& r) {
  InferRequest out;
  Json body = Json::object();
  std::string prompt;
  bool has_prompt = false;
  for (const auto& [name, p] : r.parameters()) {
    // Triton's own request parameters are not sampling parameters.
    if (name.rfind("triton_", 0) == 0) continue;
    body[name] = ParameterJson(p);
  }
  for (int i = 0; i < r.inputs_size(); ++i) {
    const std::string& name = r.inputs(i).name();
    if (name == "text_input") {
      MM_ASSIGN_OR_RETURN(prompt, OneBytes(r, i));
      has_prompt = true;
    } else if (name == "stream") {
      MM_ASSIGN_OR_RETURN(out.stream, OneBool(r, i));
    } else if (name == "exclude_input_in_output") {
      MM_ASSIGN_OR_RETURN(out.exclude_input, OneBool(r, i));
    } else if (name == "sampling_parameters") {
      MM_ASSIGN_OR_RETURN(std::string text, OneBytes(r, i));
      Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded() || !j.is_object()) return Bad(name, "must be a JSON object");
      for (const auto& [k, v] : j.items()) body[k] = v;
    } else {
      return Bad(name, "is not an input of this model: it takes text_input (BYTES), stream (BOOL), "
                       "sampling_parameters (BYTES, JSON) and exclude_input_in_output (BOOL)");
    }
  }
  if (!has_prompt) return Bad("text_input", "is required");
  for (const char* field : {"prompt", "stream", "stream_options", "n", "echo"}) {
    if (body.contains(field)) return Bad("sampling_parameters", absl::StrCat("cannot set '", field, "'"));
  }
  body["prompt"] = prompt;
  body["model"] = r.model_name();
  absl::StatusOr<CompletionRequest> c = ParseCompletionRequest(body.dump(-1, ' ', false, Json::error_handler_t::replace));
  if (!c.ok()) return absl::InvalidArgumentError(absl::StrCat("sampling_parameters: ", c.status().message()));
  out.completion = *std::move(c);
  return out;
}

inference::ModelInferResponse InferResponse(const inference::ModelInferRequest& request, const std::string& model,
                                            const std::string& text, v1::FinishReason reason, bool final) {
  inference::ModelInferResponse out;
  out.set_model_name(model);
  out.set_model_version("1");
  out.set_id(request.id());
  auto* t = out.add_outputs();
  t->set_name("text_output");
  t->set_datatype("BYTES");
  t->add_shape(1);
  out.add_raw_output_contents(JoinRawBytes(text));
  (*out.mutable_parameters())["triton_final_response"].set_bool_param(final);
  if (const char* r = FinishReasonName(reason)) (*out.mutable_parameters())["finish_reason"].set_string_param(r);
  return out;
}

inference::ModelMetadataResponse ModelMetadata(const std::string& model) {
  inference::ModelMetadataResponse out;
  out.set_name(model);
  out.add_versions("1");
  out.set_platform("moemesh");
  for (auto [name, type] : {std::pair{"text_input", "BYTES"}, {"stream", "BOOL"}, {"sampling_parameters", "BYTES"},
                            {"exclude_input_in_output", "BOOL"}}) {
    auto* t = out.add_inputs();
    t->set_name(name);
    t->set_datatype(type);
    t->add_shape(1);
  }
  auto* t = out.add_outputs();
  t->set_name("text_output");
  t->set_datatype("BYTES");
  t->add_shape(-1);
  return out;
}

}  // namespace moemesh
