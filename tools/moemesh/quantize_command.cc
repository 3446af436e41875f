#include "tools/moemesh/quantize_command.h"

#include <filesystem>
#include <map>
#include <memory>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/common/file_util.h"
#include "core/common/status_macros.h"
#include "core/model/config.h"
#include "core/model/safetensors.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

namespace fs = std::filesystem;

// DeepSeek-V3's blocks (weight_block_size).
constexpr int kFp8Block = 128;

// Whether a tensor is a projection the command quantizes.
bool Quantized(const std::string& name, const TensorInfo& t, bool all_layers) {
  if (t.shape.size() != 2 || !absl::StartsWith(name, "model.layers.") || !absl::EndsWith(name, ".weight")) {
    return false;
  }
  const bool expert = absl::StrContains(name, ".experts.");
  const bool projection = absl::EndsWith(name, "_proj.weight") ||
                          (expert && (absl::EndsWith(name, ".w1.weight") || absl::EndsWith(name, ".w2.weight") ||
                                      absl::EndsWith(name, ".w3.weight")));
  return projection && (expert || all_layers);
}

std::string Bytes(const void* data, size_t n) { return std::string(static_cast<const char*>(data), n); }

// A projection as DeepSeek-V3's FP8 checkpoints store it: E4M3 weights
// under its name, and their blocks' scales.
absl::StatusOr<std::vector<TensorToWrite>> Fp8Layer(const std::string& name, const TensorInfo& t) {
  const int rows = static_cast<int>(t.shape[0]), cols = static_cast<int>(t.shape[1]);
  absl::StatusOr<Fp8BlockTensors> b = ToFp8Blocks(MatrixView{t.dtype, rows, cols, t.data}, kFp8Block, kFp8Block);
  if (!b.ok()) return absl::InvalidArgumentError(absl::StrCat(name, ": ", b.status().message()));
  return std::vector<TensorToWrite>{
      {name, DType::kF8E4M3, t.shape, Bytes(b->codes.data(), b->codes.size())},
      {name + "_scale_inv", DType::kF32, {(rows + kFp8Block - 1) / kFp8Block, (cols + kFp8Block - 1) / kFp8Block},
       Bytes(b->scales.data(), b->scales.size() * 4)}};
}

// A projection in int4 as a GPTQ (v1, or v2 where `v2`) or AWQ layer:
// qweight, qzeros, scales (and GPTQ's g_idx, in order).
absl::StatusOr<std::vector<TensorToWrite>> Int4Layer(const std::string& name, const TensorInfo& t,
                                                     const QuantSpec& spec, bool gptq, bool v2) {
  const int rows = static_cast<int>(t.shape[0]), cols = static_cast<int>(t.shape[1]);
  absl::StatusOr<std::shared_ptr<const QuantizedMatrix>> q = Quantize(MatrixView{t.dtype, rows, cols, t.data}, spec);
  absl::StatusOr<PackedInt4Tensors> packed =
      q.ok() ? PackInt4((*q)->view(), gptq ? PackedInt4::Layout::kGptq : PackedInt4::Layout::kAwq, v2)
             : absl::StatusOr<PackedInt4Tensors>(q.status());
  if (!packed.ok()) return absl::InvalidArgumentError(absl::StrCat(name, ": ", packed.status().message()));
  const std::string layer = name.substr(0, name.size() - 7);
  const int64_t groups = (*q)->view().groups();
  std::vector<TensorToWrite> out = {
      {layer + ".qweight", DType::kI32,
       gptq ? std::vector<int64_t>{cols / 8, rows} : std::vector<int64_t>{cols, rows / 8},
       Bytes(packed->qweight.data(), packed->qweight.size() * 4)},
      {layer + ".qzeros", DType::kI32, {groups, rows / 8}, Bytes(packed->qzeros.data(), packed->qzeros.size() * 4)},
      {layer + ".scales", DType::kF16, {groups, rows}, Bytes(packed->scales.data(), packed->scales.size() * 2)}};
  if (gptq) {
    std::vector<int32_t> g_idx(cols);
    for (int i = 0; i < cols; ++i) g_idx[i] = i / spec.group;
    out.push_back({layer + ".g_idx", DType::kI32, {cols}, Bytes(g_idx.data(), g_idx.size() * 4)});
  }
  return out;
}

}  // namespace

absl::Status RunQuantize(const QuantizeCommand& cmd, std::ostream& out) {
  if (cmd.model_dir.empty() || cmd.out_dir.empty()) {
    return absl::InvalidArgumentError("--model DIR and --out DIR are required");
  }
  if (cmd.format != "gptq" && cmd.format != "awq" && cmd.format != "fp8") {
    return absl::InvalidArgumentError("--format must be gptq, awq or fp8");
  }
  const bool fp8 = cmd.format == "fp8";
  if (fp8 && cmd.spec.kind != QuantKind::kNone) {
    return absl::InvalidArgumentError(absl::StrCat("--quantize ", QuantSpecName(cmd.spec),
                                                   " with --format fp8: FP8 blocks take no --quantize"));
  }
  if (!fp8 && cmd.spec.kind != QuantKind::kInt4) {
    return absl::InvalidArgumentError(absl::StrCat("--quantize ", QuantSpecName(cmd.spec),
                                                   ": a checkpoint is written in int4 (int4, int4:G, int4:G:asym)"));
  }
  if (cmd.spec.int8_inputs) {
    return absl::InvalidArgumentError(absl::StrCat("--quantize ", QuantSpecName(cmd.spec),
                                                   ": int8 inputs (:q8) are chosen when a model is served, not "
                                                   "written into a checkpoint"));
  }
  std::error_code ec;
  if (fs::exists(cmd.out_dir, ec) && !fs::is_empty(cmd.out_dir, ec)) {
    return absl::AlreadyExistsError(absl::StrCat("--out ", cmd.out_dir, " exists and is not empty"));
  }
  MM_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(cmd.model_dir));
  if (config.quantization.method != CheckpointQuantization::Method::kNone) {
    return absl::InvalidArgumentError(absl::StrCat(cmd.model_dir, " is quantized already"));
  }
  MM_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(cmd.model_dir));
  fs::create_directories(cmd.out_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot make ", cmd.out_dir, ": ", ec.message()));
  const bool gptq = cmd.format == "gptq";

  size_t total = 0, done = 0;
  for (const auto& f : ckpt->files()) {
    for (const auto& [name, t] : f->tensors()) total += Quantized(name, t, cmd.all_layers);
  }
  if (total == 0) return absl::InvalidArgumentError(absl::StrCat(cmd.model_dir, ": no projection to quantize"));
  StatusLine status(cmd.progress);
  // GPTQ's v1 format stores zero points minus one and so cannot hold 0,
  // which asymmetric groups may have: those are written as v2.
  const bool v2 = gptq && !cmd.spec.symmetric;
  nlohmann::json weight_map = nlohmann::json::object();
  for (const auto& f : ckpt->files()) {
    const std::string file = fs::path(f->path()).filename().string();
    std::vector<TensorToWrite> tensors;
    for (const auto& [name, t] : f->tensors()) {
      if (!Quantized(name, t, cmd.all_layers)) {
        tensors.push_back({name, t.dtype, t.shape, Bytes(t.data, t.nbytes)});
        weight_map[name] = file;
        continue;
      }
      absl::StatusOr<std::vector<TensorToWrite>> written =
          fp8 ? Fp8Layer(name, t) : Int4Layer(name, t, cmd.spec, gptq, v2);
      if (!written.ok()) return written.status();
      for (TensorToWrite& w : *written) {
        weight_map[w.name] = file;
        tensors.push_back(std::move(w));
      }
      ++done;
      status.Set(absl::StrCat("quantizing ", done, "/", total, " projections (", name, ")"));
    }
    MM_RETURN_IF_ERROR(WriteSafetensors(JoinPath(cmd.out_dir, file), tensors));
  }
  // config.json with the checkpoint's quantization_config; the rest copied.
  MM_ASSIGN_OR_RETURN(std::string config_text, ReadFile(JoinPath(cmd.model_dir, "config.json")));
  nlohmann::json j = nlohmann::json::parse(config_text);
  j["quantization_config"] =
      fp8    ? nlohmann::json{{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"activation_scheme", "dynamic"},
                              {"weight_block_size", {kFp8Block, kFp8Block}}}
      : gptq ? nlohmann::json{{"quant_method", "gptq"}, {"bits", 4}, {"group_size", cmd.spec.group},
                            {"desc_act", false}, {"sym", cmd.spec.symmetric},
                            {"checkpoint_format", v2 ? "gptq_v2" : "gptq"}}
           : nlohmann::json{{"quant_method", "awq"}, {"bits", 4}, {"group_size", cmd.spec.group},
                            {"version", "gemm"}, {"zero_point", true}};
  MM_RETURN_IF_ERROR(WriteFileAtomically(JoinPath(cmd.out_dir, "config.json"), j.dump(2) + "\n"));
  if (ckpt->files().size() > 1) {
    nlohmann::json index = {{"metadata", nlohmann::json::object()}, {"weight_map", weight_map}};
    MM_RETURN_IF_ERROR(
        WriteFileAtomically(JoinPath(cmd.out_dir, "model.safetensors.index.json"), index.dump(2) + "\n"));
  }
  for (const auto& e : fs::directory_iterator(cmd.model_dir)) {
    const std::string n = e.path().filename().string();
    if (!e.is_regular_file() || n == "config.json" || n == "model.safetensors.index.json" ||
        absl::EndsWith(n, ".safetensors")) {
      continue;
    }
    fs::copy_file(e.path(), fs::path(cmd.out_dir) / n, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot copy ", n, ": ", ec.message()));
  }
  status.Clear();
  out << "wrote " << done << " projections in "
      << (fp8 ? absl::StrCat("FP8 blocks of ", kFp8Block, " x ", kFp8Block, " as a DeepSeek-V3-style")
              : absl::StrCat(QuantSpecName(cmd.spec), " as ", gptq ? "a GPTQ" : "an AWQ"))
      << " checkpoint to " << cmd.out_dir << "\n";
  return absl::OkStatus();
}

}  // namespace moemesh
