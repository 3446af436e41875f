#ifndef MOEMESH_CORE_TOKENIZER_BPE_H_
#define MOEMESH_CORE_TOKENIZER_BPE_H_

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moemesh {

// Byte-pair encoding over a vocabulary and ranked merges, as Hugging Face's
// BPE model: a word's characters are merged pairwise, lowest rank first
// (leftmost first among equal ranks). Words seen before come from a cache
// (as Hugging Face's and tiktoken's: most words of a text recur), bounded
// at kCacheWords words of up to kCacheWordBytes bytes (a few MB; Hugging
// Face keeps 10,000, which code and Chinese text outgrow). Thread-safe.
class BpeModel {
 public:
  struct Options {
    std::optional<std::string> unk_token;
    bool byte_fallback = false;  // unknown characters become <0xNN> tokens
    bool fuse_unk = false;       // consecutive unknowns become one
    bool ignore_merges = false;  // a word already in the vocabulary is one token
  };

  // `merges` are pairs of token strings, first = highest priority.
  // INVALID_ARGUMENT when a merge names a token missing from the vocabulary.
  static absl::StatusOr<BpeModel> Create(absl::flat_hash_map<std::string, int> vocab,
                                         const std::vector<std::pair<std::string, std::string>>& merges,
                                         Options options);

  // Appends the ids of one pre-tokenized word. INVALID_ARGUMENT when a
  // character is unknown and neither byte fallback nor unk applies.
  absl::Status Tokenize(absl::string_view word, std::vector<int>* ids) const;

  static constexpr size_t kCacheWords = 65536;
  static constexpr size_t kCacheWordBytes = 256;

  std::optional<int> TokenToId(absl::string_view token) const;
  int vocab_size() const { return static_cast<int>(id_to_token_.size()); }
  // "" for ids with no token.
  const std::string& IdToToken(int id) const { return id_to_token_[id]; }

 private:
  struct Merge {
    int rank;
    int new_id;
  };
  // The ids of the vocabulary's one-character tokens by code point: a
  // word's characters are looked up without hashing strings.
  absl::flat_hash_map<char32_t, int> char_ids_;
  static uint64_t Key(int a, int b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b); }
  // Tokenize without the cache.
  absl::Status TokenizeUncached(absl::string_view word, std::vector<int>* ids) const;
  struct Cache;

  absl::flat_hash_map<std::string, int> vocab_;
  std::vector<std::string> id_to_token_;
  absl::flat_hash_map<uint64_t, Merge> merges_;
  Options options_;
  int unk_id_ = -1;
  std::shared_ptr<Cache> cache_;  // shared by copies, which are the same model
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_TOKENIZER_BPE_H_
