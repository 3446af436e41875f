#include "core/tokenizer/decoder.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "core/common/status_macros.h"
#include "core/tokenizer/byte_level.h"
#include "core/tokenizer/replace_pattern.h"
#include "core/tokenizer/utf8.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

using Json = nlohmann::json;
constexpr char kReplacementChar[] = "\xEF\xBF\xBD";

class ByteLevelDecoder : public TokenDecoder {
 public:
  std::vector<std::string> DecodeChain(std::vector<std::string> tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      // A token whose characters are not all byte stand-ins (an added token
      // such as "<|bos|>" is) keeps its own UTF-8, as Hugging Face does.
      std::string b;
      if (ByteLevelToBytes(t, &b)) {
        bytes += b;
      } else {
        bytes += t;
      }
    }
    return {Utf8Lossy(bytes)};
  }
};

class MetaspaceDecoder : public TokenDecoder {
 public:
  MetaspaceDecoder(std::string replacement, bool prepend) : rep_(std::move(replacement)), prepend_(prepend) {}
  std::vector<std::string> DecodeChain(std::vector<std::string> tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      // The first token loses its replacement characters when a prefix
      // space was added during encoding; elsewhere they become spaces.
      tokens[i] = absl::StrReplaceAll(tokens[i], {{rep_, i == 0 && prepend_ ? "" : " "}});
    }
    return tokens;
  }

 private:
  std::string rep_;
  bool prepend_;
};

class ReplaceDecoder : public TokenDecoder {
 public:
  explicit ReplaceDecoder(std::unique_ptr<ReplacePattern> r) : r_(std::move(r)) {}
  std::vector<std::string> DecodeChain(std::vector<std::string> tokens) const override {
    for (std::string& t : tokens) {
      // Only a regex that exhausts PCRE2's limits fails; the token stays.
      if (auto replaced = r_->Apply(t); replaced.ok()) t = std::move(*replaced);
    }
    return tokens;
  }

 private:
  std::unique_ptr<ReplacePattern> r_;
};

int ParseByteToken(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; ++i) {
    char c = t[i];
    int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

class ByteFallbackDecoder : public TokenDecoder {
 public:
  std::vector<std::string> DecodeChain(std::vector<std::string> tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (FirstInvalidUtf8(pending) == pending.size()) {
        out.push_back(pending);
      } else {
        for (size_t i = 0; i < pending.size(); ++i) out.push_back(kReplacementChar);
      }
      pending.clear();
    };
    for (std::string& t : tokens) {
      int b = ParseByteToken(t);
      if (b >= 0) {
        pending.push_back(static_cast<char>(b));
        continue;
      }
      flush();
      out.push_back(std::move(t));
    }
    flush();
    return out;
  }
};

class FuseDecoder : public TokenDecoder {
 public:
  std::vector<std::string> DecodeChain(std::vector<std::string> tokens) const override {
    return {absl::StrJoin(tokens, "")};
  }
};

class StripDecoder : public TokenDecoder {
 public:
  StripDecoder(std::string content, int start, int stop) : content_(std::move(content)), start_(start), stop_(stop) {}
  std::vector<std::string> DecodeChain(std::vector<std::string> tokens) const override {
    const size_t n = content_.size();
    for (std::string& t : tokens) {
      size_t begin = 0, end = t.size();
      for (int i = 0; i < start_ && begin + n <= end && t.compare(begin, n, content_) == 0; ++i) begin += n;
      for (int i = 0; i < stop_ && end >= begin + n && t.compare(end - n, n, content_) == 0; ++i) end -= n;
      t = t.substr(begin, end - begin);
    }
    return tokens;
  }

 private:
  std::string content_;
  int start_, stop_;
};

class SequenceDecoder : public TokenDecoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<TokenDecoder>> steps) : steps_(std::move(steps)) {}
  std::vector<std::string> DecodeChain(std::vector<std::string> tokens) const override {
    for (const auto& s : steps_) tokens = s->DecodeChain(std::move(tokens));
    return tokens;
  }

 private:
  std::vector<std::unique_ptr<TokenDecoder>> steps_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TokenDecoder>> ParseDecoder(const Json& j, absl::string_view source) {
  std::string type = j.is_object() ? j.value("type", "") : "";
  if (type == "ByteLevel") return std::unique_ptr<TokenDecoder>(new ByteLevelDecoder);
  if (type == "ByteFallback") return std::unique_ptr<TokenDecoder>(new ByteFallbackDecoder);
  if (type == "Fuse") return std::unique_ptr<TokenDecoder>(new FuseDecoder);
  if (type == "Metaspace") {
    bool prepend = true;
    if (j.contains("prepend_scheme")) {
      prepend = j["prepend_scheme"].get<std::string>() != "never";
    } else if (j.contains("add_prefix_space")) {
      prepend = j["add_prefix_space"].get<bool>();
    }
    return std::unique_ptr<TokenDecoder>(new MetaspaceDecoder(j.value("replacement", "\xE2\x96\x81"), prepend));
  }
  if (type == "Strip") {
    return std::unique_ptr<TokenDecoder>(
        new StripDecoder(j.value("content", " "), j.value("start", 0), j.value("stop", 0)));
  }
  if (type == "Replace") {
    MM_ASSIGN_OR_RETURN(auto r, ReplacePattern::Parse(j, source));
    return std::unique_ptr<TokenDecoder>(new ReplaceDecoder(std::move(r)));
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<TokenDecoder>> steps;
    for (const Json& s : j.value("decoders", Json::array())) {
      MM_ASSIGN_OR_RETURN(auto step, ParseDecoder(s, source));
      steps.push_back(std::move(step));
    }
    return std::unique_ptr<TokenDecoder>(new SequenceDecoder(std::move(steps)));
  }
  return absl::UnimplementedError(absl::StrCat(source, ": unsupported decoder \"",
                                               type.empty() ? j.dump() : type, "\""));
}

}  // namespace moemesh
