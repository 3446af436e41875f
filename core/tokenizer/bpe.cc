#include "core/tokenizer/bpe.h"

#include <queue>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/strings/str_format.h"
#include "core/tokenizer/utf8.h"

namespace moemesh {

struct BpeModel::Cache {
  absl::Mutex mu;
  absl::flat_hash_map<std::string, std::vector<int>> words ABSL_GUARDED_BY(mu);
};

absl::StatusOr<BpeModel> BpeModel::Create(absl::flat_hash_map<std::string, int> vocab,
                                          const std::vector<std::pair<std::string, std::string>>& merges,
                                          Options options) {
  BpeModel m;
  m.options_ = std::move(options);
  m.cache_ = std::make_shared<Cache>();
  int max_id = -1;
  for (const auto& [tok, id] : vocab) {
    if (id < 0) return absl::InvalidArgumentError(absl::StrCat("token \"", tok, "\" has a negative id"));
    max_id = std::max(max_id, id);
  }
  m.id_to_token_.assign(max_id + 1, "");
  for (const auto& [tok, id] : vocab) {
    m.id_to_token_[id] = tok;
    size_t pos = 0;
    const char32_t cp = tok.empty() ? 0 : NextCodePoint(tok, &pos);
    if (!tok.empty() && pos == tok.size()) m.char_ids_[cp] = id;
  }
  m.vocab_ = std::move(vocab);
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    auto ia = m.vocab_.find(a), ib = m.vocab_.find(b), ic = m.vocab_.find(a + b);
    if (ia == m.vocab_.end() || ib == m.vocab_.end() || ic == m.vocab_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("merge ", rank, " (\"", a, "\" \"", b, "\") uses a token missing from the vocabulary"));
    }
    // The first occurrence of a pair wins, as in Hugging Face.
    m.merges_.emplace(Key(ia->second, ib->second), Merge{static_cast<int>(rank), ic->second});
  }
  if (m.options_.unk_token) {
    auto it = m.vocab_.find(*m.options_.unk_token);
    if (it == m.vocab_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unk_token \"", *m.options_.unk_token, "\" is not in the vocabulary"));
    }
    m.unk_id_ = it->second;
  }
  return m;
}

std::optional<int> BpeModel::TokenToId(absl::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

absl::Status BpeModel::Tokenize(absl::string_view word, std::vector<int>* ids) const {
  if (word.empty()) return absl::OkStatus();
  if (word.size() > kCacheWordBytes) return TokenizeUncached(word, ids);
  {
    absl::ReaderMutexLock lock(&cache_->mu);
    auto it = cache_->words.find(word);
    if (it != cache_->words.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return absl::OkStatus();
    }
  }
  const size_t before = ids->size();
  absl::Status st = TokenizeUncached(word, ids);
  if (!st.ok()) return st;
  absl::MutexLock lock(&cache_->mu);
  // Full, it keeps what it has (as Hugging Face's): no churn.
  if (cache_->words.size() < kCacheWords) {
    cache_->words.try_emplace(word, ids->begin() + static_cast<std::ptrdiff_t>(before), ids->end());
  }
  return absl::OkStatus();
}

absl::Status BpeModel::TokenizeUncached(absl::string_view word, std::vector<int>* ids) const {
  if (options_.ignore_merges) {
    auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      ids->push_back(it->second);
      return absl::OkStatus();
    }
  }
  // Symbols as a doubly linked list over the word's characters.
  struct Symbol {
    int id;
    int prev, next;
    bool alive;
  };
  std::vector<Symbol> sym;
  size_t pos = 0;
  bool last_unk = false;
  while (pos < word.size()) {
    size_t start = pos;
    const char32_t cp = NextCodePoint(word, &pos);
    absl::string_view ch = word.substr(start, pos - start);
    // By code point (a malformed sequence decodes to U+FFFD: only a true
    // match counts), else by the bytes, as before.
    int id = -1;
    if (auto it = char_ids_.find(cp); it != char_ids_.end() && id_to_token_[it->second] == ch) {
      id = it->second;
    } else if (auto v = vocab_.find(ch); v != vocab_.end()) {
      id = v->second;
    }
    if (id >= 0) {
      sym.push_back({id, 0, 0, true});
      last_unk = false;
      continue;
    }
    if (options_.byte_fallback) {
      bool all = true;
      std::vector<int> bytes;
      for (unsigned char b : ch) {
        auto bt = vocab_.find(absl::StrFormat("<0x%02X>", b));
        if (bt == vocab_.end()) {
          all = false;
          break;
        }
        bytes.push_back(bt->second);
      }
      if (all) {
        for (int b : bytes) sym.push_back({b, 0, 0, true});
        last_unk = false;
        continue;
      }
    }
    if (unk_id_ < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "character \"", ch, "\" is not in the vocabulary and the tokenizer has no unk_token"));
    }
    if (!(options_.fuse_unk && last_unk)) sym.push_back({unk_id_, 0, 0, true});
    last_unk = true;
  }
  const int n = static_cast<int>(sym.size());
  for (int i = 0; i < n; ++i) {
    sym[i].prev = i - 1;
    sym[i].next = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    int rank, pos, left_id, right_id, new_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto consider = [&](int i) {
    if (i < 0 || sym[i].next < 0) return;
    auto it = merges_.find(Key(sym[i].id, sym[sym[i].next].id));
    if (it != merges_.end()) heap.push({it->second.rank, i, sym[i].id, sym[sym[i].next].id, it->second.new_id});
  };
  for (int i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    Candidate c = heap.top();
    heap.pop();
    Symbol& left = sym[c.pos];
    // Skip candidates made stale by earlier merges.
    if (!left.alive || left.id != c.left_id || left.next < 0 || sym[left.next].id != c.right_id) continue;
    Symbol& right = sym[left.next];
    left.id = c.new_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) sym[right.next].prev = c.pos;
    consider(left.prev);
    consider(c.pos);
  }
  for (int i = 0; i >= 0 && i < n; i = sym[i].next) ids->push_back(sym[i].id);
  return absl::OkStatus();
}

}  // namespace moemesh
