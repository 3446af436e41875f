#include "services/kvcache/block_store.h"

#include <sys/statvfs.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/sst_file_manager.h"
#include "rocksdb/write_batch.h"

namespace moemesh {
namespace {

constexpr int kBlocks = 1, kIndex = 2, kSessions = 3;
constexpr char kBlockFormat = 1, kSessionFormat = 1;

// Little-endian fields appended to and read from a value.
void PutU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i, v >>= 8) out->push_back(static_cast<char>(v & 0xff));
}
void PutTokens(std::string* out, absl::Span<const int> tokens) {
  PutU64(out, tokens.size());
  for (int t : tokens) {
    const uint32_t u = static_cast<uint32_t>(t);
    for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((u >> (8 * i)) & 0xff));
  }
}

class Reader {
 public:
  explicit Reader(absl::string_view s) : s_(s) {}
  bool U64(uint64_t* v) {
    if (s_.size() < 8) return false;
    *v = 0;
    for (int i = 7; i >= 0; --i) *v = (*v << 8) | static_cast<unsigned char>(s_[i]);
    s_.remove_prefix(8);
    return true;
  }
  bool Bytes(size_t n, absl::string_view* v) {
    if (s_.size() < n) return false;
    *v = s_.substr(0, n);
    s_.remove_prefix(n);
    return true;
  }
  bool Tokens(std::vector<int>* tokens) {
    uint64_t n;
    if (!U64(&n) || n > s_.size() / 4) return false;
    tokens->resize(n);
    for (uint64_t i = 0; i < n; ++i) {
      uint32_t u = 0;
      for (int b = 3; b >= 0; --b) u = (u << 8) | static_cast<unsigned char>(s_[4 * i + b]);
      (*tokens)[i] = static_cast<int>(u);
    }
    s_.remove_prefix(4 * n);
    return true;
  }
  absl::string_view rest() const { return s_; }

 private:
  absl::string_view s_;
};

// A value is [format][checksum of key + the rest][the rest]: a value read
// under another key, or torn, or flipped, fails its checksum.
std::string Seal(char format, absl::string_view key, const std::string& body) {
  std::string value(1, format);
  PutU64(&value, Checksum64(key, body));
  value += body;
  return value;
}

absl::StatusOr<absl::string_view> Unseal(char format, absl::string_view key, absl::string_view value) {
  Reader r(value);
  absl::string_view f;
  uint64_t sum;
  if (!r.Bytes(1, &f) || f[0] != format || !r.U64(&sum) || sum != Checksum64(key, r.rest())) {
    return absl::DataLossError("stored value fails its checksum");
  }
  return r.rest();
}

std::string BlockKey(const BlockHash& root, const BlockHash& hash) { return root.Bytes() + hash.Bytes(); }

std::string IndexValue(int64_t bytes, uint64_t stamp) {
  std::string v;
  PutU64(&v, static_cast<uint64_t>(bytes));
  PutU64(&v, stamp);
  return v;
}

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  if (s.IsNoSpace() || s.subcode() == rocksdb::Status::kSpaceLimit) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": the kvcache store's disk is full (", s.ToString(),
                                                     "); reads go on, writes resume when space returns"));
  }
  if (s.IsCorruption()) return absl::DataLossError(absl::StrCat(what, ": ", s.ToString()));
  return absl::UnavailableError(absl::StrCat(what, ": ", s.ToString()));
}

}  // namespace

absl::Status BlockStore::Options::Validate() const {
  if (dir.empty()) return absl::InvalidArgumentError("the kvcache store needs a directory (--dir)");
  if (capacity_bytes <= 0) return absl::InvalidArgumentError("--capacity-mb must be positive");
  if (min_free_bytes < 0) return absl::InvalidArgumentError("--min-free-mb must not be negative");
  if (session_ttl <= absl::ZeroDuration()) return absl::InvalidArgumentError("--session-ttl must be positive");
  return absl::OkStatus();
}

BlockStore::BlockStore(const Options& options) : options_(options) {}

BlockStore::~BlockStore() {
  for (rocksdb::ColumnFamilyHandle* h : handles_) db_->DestroyColumnFamilyHandle(h);
  if (db_) db_->Close();
}

absl::StatusOr<std::unique_ptr<BlockStore>> BlockStore::Open(const Options& options) {
  if (absl::Status st = options.Validate(); !st.ok()) return st;
  std::unique_ptr<BlockStore> store(new BlockStore(options));
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  // Out of space: RocksDB stops writes and retries on its own once space
  // returns (its SstFileManager watches for it).
  db_options.sst_file_manager.reset(rocksdb::NewSstFileManager(rocksdb::Env::Default()));
  rocksdb::ColumnFamilyOptions cf;
  cf.OptimizeForPointLookup(64);
  std::vector<rocksdb::ColumnFamilyDescriptor> families = {
      {rocksdb::kDefaultColumnFamilyName, cf}, {"blocks", cf}, {"index", cf}, {"sessions", cf}};
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, options.dir, families, &store->handles_, &db);
  if (!s.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("cannot open the kvcache store in ", options.dir, ": ",
                                                      s.ToString()));
  }
  store->db_.reset(db);

  // The LRU, from the index: oldest stamp first.
  std::vector<std::pair<uint64_t, std::string>> order;
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), store->handles_[kIndex]));
  absl::MutexLock lock(&store->mu_);
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    Reader r(absl::string_view(it->value().data(), it->value().size()));
    uint64_t bytes = 0, stamp = 0;
    if (!r.U64(&bytes) || !r.U64(&stamp)) continue;
    const std::string key = it->key().ToString();
    order.emplace_back(stamp, key);
    store->index_[key].bytes = static_cast<int64_t>(bytes);
    store->bytes_ += static_cast<int64_t>(bytes);
    store->clock_ = std::max(store->clock_, stamp);
  }
  if (!it->status().ok()) return FromRocks(it->status(), "reading the kvcache index");
  std::sort(order.begin(), order.end());
  for (auto& [stamp, key] : order) store->index_[key].lru = store->lru_.insert(store->lru_.end(), key);
  it.reset(db->NewIterator(rocksdb::ReadOptions(), store->handles_[kSessions]));
  for (it->SeekToFirst(); it->Valid(); it->Next()) ++store->sessions_;
  return store;
}

absl::Status BlockStore::Write(rocksdb::WriteBatch* batch, bool sync) {
  rocksdb::WriteOptions wo;
  wo.sync = sync && options_.sync;
  rocksdb::Status s = db_->Write(wo, batch);
  if (!s.ok() && (s.IsNoSpace() || s.subcode() == rocksdb::Status::kSpaceLimit)) {
    // Once space is back, writes fail with the stored error until the
    // database resumes: ask it to, and try once more.
    if (db_->Resume().ok()) s = db_->Write(wo, batch);
  }
  return FromRocks(s, "kvcache write");
}

absl::Status BlockStore::CheckSpace() const {
  struct statvfs fs;
  if (statvfs(options_.dir.c_str(), &fs) != 0) return absl::OkStatus();  // RocksDB will say what is wrong
  const int64_t free_bytes = static_cast<int64_t>(fs.f_bavail) * static_cast<int64_t>(fs.f_frsize);
  if (free_bytes >= options_.min_free_bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat("the kvcache store's disk is full: ", free_bytes >> 20,
                                                   " MiB free in ", options_.dir, ", writes need ",
                                                   options_.min_free_bytes >> 20,
                                                   " (--min-free-mb); reads go on, writes resume when space returns"));
}

bool BlockStore::Held(const std::string& key) const {
  absl::MutexLock lock(&mu_);
  return index_.contains(key);
}

void BlockStore::Touch(const std::string& key) {
  absl::MutexLock lock(&mu_);  // with the index row's write: an eviction cannot slip between
  auto it = index_.find(key);
  if (it == index_.end()) return;
  lru_.splice(lru_.end(), lru_, it->second.lru);
  // The order of use matters only for eviction: it is not logged, and a
  // crash forgets the latest uses, never a block.
  rocksdb::WriteOptions wo;
  wo.disableWAL = true;
  db_->Put(wo, handles_[kIndex], key, IndexValue(it->second.bytes, ++clock_)).PermitUncheckedError();
}

std::vector<std::string> BlockStore::EvictFor(int64_t bytes, const std::string& keep,
                                              rocksdb::WriteBatch* batch) const {
  std::vector<std::string> victims;
  int64_t held = bytes_;
  for (auto it = lru_.begin(); it != lru_.end() && held + bytes > options_.capacity_bytes; ++it) {
    if (*it == keep) continue;  // the parent of the block being put
    held -= index_.at(*it).bytes;
    victims.push_back(*it);
    batch->Delete(handles_[kBlocks], *it).PermitUncheckedError();
    batch->Delete(handles_[kIndex], *it).PermitUncheckedError();
  }
  return victims;
}

void BlockStore::Forget(const std::string& key) {
  auto it = index_.find(key);
  if (it == index_.end()) return;
  lru_.erase(it->second.lru);
  bytes_ -= it->second.bytes;
  index_.erase(it);
}

void BlockStore::Drop(const std::string& key, bool corrupt) {
  rocksdb::WriteBatch batch;
  absl::MutexLock lock(&mu_);  // as one step with the index, as Put
  if (corrupt) ++corrupt_reads_;
  Forget(key);
  batch.Delete(handles_[kBlocks], key).PermitUncheckedError();
  batch.Delete(handles_[kIndex], key).PermitUncheckedError();
  Write(&batch, /*sync=*/false).IgnoreError();
}

int BlockStore::LongestPrefix(const BlockHash& root, absl::Span<const BlockHash> chain) {
  absl::MutexLock lock(&mu_);
  int held = 0;
  while (held < static_cast<int>(chain.size()) && index_.contains(BlockKey(root, chain[held]))) ++held;
  return held;
}

absl::Status BlockStore::Put(const BlockHash& root, const StoredBlock& block) {
  return Put(root, BlockView{block.hash, block.parent, block.tokens, block.data});
}

absl::Status BlockStore::Put(const BlockHash& root, const BlockView& block) {
  if (block.tokens.empty() || static_cast<int>(block.tokens.size()) > options_.max_block_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("a block holds 1 to ", options_.max_block_tokens,
                                                   " tokens; this one has ", block.tokens.size()));
  }
  if (block.data.empty() || static_cast<int64_t>(block.data.size()) > options_.max_block_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("a block's data is 1 to ", options_.max_block_bytes,
                                                   " bytes; this one has ", block.data.size()));
  }
  if (ChainBlockHash(block.parent, block.tokens) != block.hash) {
    return absl::InvalidArgumentError(absl::StrCat("block ", block.hash.Hex(),
                                                   " is not the chain hash of its parent and tokens"));
  }
  const std::string key = BlockKey(root, block.hash);
  const std::string parent_key = block.parent == root ? std::string() : BlockKey(root, block.parent);
  // The value is Seal(kBlockFormat, key, parent + tokens + data), written
  // in parts: the data is not copied into one string first.
  std::string head = block.parent.Bytes();
  PutTokens(&head, block.tokens);
  std::string seal(1, kBlockFormat);
  PutU64(&seal, Checksum64Parts({key, head, block.data}));
  const rocksdb::Slice key_part(key), value_parts[3] = {seal, head, rocksdb::Slice(block.data.data(), block.data.size())};
  const int64_t bytes = static_cast<int64_t>(key.size() + seal.size() + head.size() + block.data.size());
  if (bytes > options_.capacity_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("a block of ", bytes, " bytes exceeds the store's capacity of ",
                                                     options_.capacity_bytes));
  }
  rocksdb::WriteBatch batch;
  absl::MutexLock lock(&mu_);  // one writer at a time keeps the index and the disk in step
  if (!parent_key.empty() && !index_.contains(parent_key)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "block ", block.hash.Hex(), ": its parent ", block.parent.Hex(),
        " is neither the root nor a block held for root ", root.Hex(),
        " (put a chain from its first block, under the root of the model that computed it)"));
  }
  if (index_.contains(key)) return absl::OkStatus();  // the same name is the same block
  if (absl::Status st = CheckSpace(); !st.ok()) return st;
  const std::vector<std::string> victims = EvictFor(bytes, parent_key, &batch);
  const uint64_t stamp = ++clock_;
  batch.Put(handles_[kBlocks], rocksdb::SliceParts(&key_part, 1), rocksdb::SliceParts(value_parts, 3))
      .PermitUncheckedError();
  batch.Put(handles_[kIndex], key, IndexValue(bytes, stamp)).PermitUncheckedError();
  absl::Status st = Write(&batch, /*sync=*/true);
  if (!st.ok()) return st;
  for (const std::string& v : victims) Forget(v);
  evictions_ += static_cast<int64_t>(victims.size());
  Entry& e = index_[key];
  e.bytes = bytes;
  e.lru = lru_.insert(lru_.end(), key);
  bytes_ += bytes;
  return absl::OkStatus();
}

absl::StatusOr<StoredBlock> BlockStore::Get(const BlockHash& root, const BlockHash& hash) {
  StoredBlock block;
  absl::Status st = Read(root, hash, &block, [&block](absl::string_view data) { block.data = std::string(data); });
  if (!st.ok()) return st;
  return block;
}

absl::Status BlockStore::Read(const BlockHash& root, const BlockHash& hash, StoredBlock* out,
                              absl::FunctionRef<void(absl::string_view data)> take) {
  const std::string key = BlockKey(root, hash);
  rocksdb::PinnableSlice value;  // no copy out of RocksDB's cache
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), handles_[kBlocks], key, &value);
  if (s.IsNotFound()) {
    if (Held(key)) Drop(key, /*corrupt=*/false);  // an index row without its block: forget it
    return absl::NotFoundError(absl::StrCat("block ", hash.Hex(), " is not held"));
  }
  if (!s.ok()) return FromRocks(s, "kvcache read");
  absl::StatusOr<absl::string_view> body = Unseal(kBlockFormat, key, absl::string_view(value.data(), value.size()));
  StoredBlock& block = *out;
  block.hash = hash;
  bool ok = body.ok();
  absl::string_view data;
  if (ok) {
    Reader r(*body);
    absl::string_view parent;
    ok = r.Bytes(16, &parent) && r.Tokens(&block.tokens);
    if (ok) {
      block.parent = *BlockHash::FromBytes(parent);
      data = r.rest();
      ok = ChainBlockHash(block.parent, block.tokens) == hash;
    }
  }
  if (!ok) {
    Drop(key, /*corrupt=*/true);
    return absl::DataLossError(absl::StrCat("block ", hash.Hex(), " failed its checksum and was dropped"));
  }
  Touch(key);
  take(data);
  return absl::OkStatus();
}

absl::Status BlockStore::CheckSessionId(const std::string& id) const {
  if (id.empty() || static_cast<int>(id.size()) > options_.max_session_id_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("a session id is 1 to ", options_.max_session_id_bytes,
                                                   " bytes; got ", id.size()));
  }
  return absl::OkStatus();
}

namespace {

std::string SessionBody(const SessionRecord& r) {
  std::string body = r.root.Bytes();
  PutU64(&body, static_cast<uint64_t>(r.version));
  PutU64(&body, static_cast<uint64_t>(absl::ToUnixMicros(r.updated)));
  PutTokens(&body, r.tokens);
  PutTokens(&body, r.turn_starts);
  return body;
}

absl::StatusOr<SessionRecord> ParseSession(const std::string& id, absl::string_view value) {
  absl::StatusOr<absl::string_view> body = Unseal(kSessionFormat, id, value);
  if (!body.ok()) return absl::DataLossError(absl::StrCat("session ", id, ": ", body.status().message()));
  Reader r(*body);
  SessionRecord rec;
  rec.id = id;
  absl::string_view root;
  uint64_t version, micros;
  if (!r.Bytes(16, &root) || !r.U64(&version) || !r.U64(&micros) || !r.Tokens(&rec.tokens) ||
      !r.Tokens(&rec.turn_starts)) {
    return absl::DataLossError(absl::StrCat("session ", id, " is malformed"));
  }
  rec.root = *BlockHash::FromBytes(root);
  rec.version = static_cast<int64_t>(version);
  rec.updated = absl::FromUnixMicros(static_cast<int64_t>(micros));
  return rec;
}

}  // namespace

absl::StatusOr<SessionRecord> BlockStore::GetSession(const std::string& id) {
  if (absl::Status st = CheckSessionId(id); !st.ok()) return st;
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), handles_[kSessions], id, &value);
  if (s.IsNotFound()) return absl::NotFoundError(absl::StrCat("no session '", id, "'"));
  if (!s.ok()) return FromRocks(s, "kvcache read");
  absl::StatusOr<SessionRecord> rec = ParseSession(id, value);
  if (rec.ok() && absl::Now() - rec->updated > options_.session_ttl) {
    return absl::NotFoundError(absl::StrCat("session '", id, "' expired (last written ", absl::FormatTime(rec->updated),
                                            ")"));
  }
  return rec;
}

absl::StatusOr<SessionRecord> BlockStore::PutSession(SessionRecord record, int64_t expected_version) {
  if (absl::Status st = CheckSessionId(record.id); !st.ok()) return st;
  if (static_cast<int>(record.tokens.size()) > options_.max_session_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("session '", record.id, "' has ", record.tokens.size(),
                                                   " tokens; the store keeps at most ", options_.max_session_tokens));
  }
  if (absl::Status st = CheckSpace(); !st.ok()) return st;
  for (size_t i = 0; i < record.turn_starts.size(); ++i) {
    const int t = record.turn_starts[i];
    if ((i == 0 && t != 0) || (i > 0 && t <= record.turn_starts[i - 1]) || t >= static_cast<int>(record.tokens.size())) {
      return absl::InvalidArgumentError(absl::StrCat("session '", record.id, "': turn_starts must be ascending offsets "
                                                     "into its tokens, the first 0"));
    }
  }
  absl::MutexLock lock(&mu_);  // the version check and the write are one step
  std::string old;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), handles_[kSessions], record.id, &old);
  int64_t version = 0;
  if (s.ok()) {
    absl::StatusOr<SessionRecord> prev = ParseSession(record.id, old);
    if (prev.ok() && absl::Now() - prev->updated <= options_.session_ttl) version = prev->version;
  } else if (!s.IsNotFound()) {
    return FromRocks(s, "kvcache read");
  }
  if (expected_version >= 0 && expected_version != version) {
    return absl::AbortedError(absl::StrCat("session '", record.id, "' is at version ", version, ", not ",
                                           expected_version, " (another turn wrote it first)"));
  }
  record.version = version + 1;
  record.updated = absl::Now();
  rocksdb::WriteBatch batch;
  batch.Put(handles_[kSessions], record.id, Seal(kSessionFormat, record.id, SessionBody(record)))
      .PermitUncheckedError();
  if (absl::Status st = Write(&batch, /*sync=*/true); !st.ok()) return st;
  if (!s.ok()) ++sessions_;
  return record;
}

absl::Status BlockStore::DeleteSession(const std::string& id) {
  if (absl::Status st = CheckSessionId(id); !st.ok()) return st;
  absl::MutexLock lock(&mu_);
  std::string old;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), handles_[kSessions], id, &old);
  if (s.IsNotFound()) return absl::NotFoundError(absl::StrCat("no session '", id, "'"));
  if (!s.ok()) return FromRocks(s, "kvcache read");
  rocksdb::WriteBatch batch;
  batch.Delete(handles_[kSessions], id).PermitUncheckedError();
  if (absl::Status st = Write(&batch, /*sync=*/true); !st.ok()) return st;
  --sessions_;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<SessionRecord>> BlockStore::ListSessions(const std::string& start_after, int limit) {
  std::vector<SessionRecord> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), handles_[kSessions]));
  const absl::Time now = absl::Now();
  for (it->Seek(start_after); it->Valid() && static_cast<int>(out.size()) < limit; it->Next()) {
    const std::string id = it->key().ToString();
    if (id == start_after) continue;
    absl::StatusOr<SessionRecord> rec = ParseSession(id, absl::string_view(it->value().data(), it->value().size()));
    if (!rec.ok() || now - rec->updated > options_.session_ttl) continue;
    out.push_back(*std::move(rec));
  }
  if (!it->status().ok()) return FromRocks(it->status(), "kvcache read");
  return out;
}

int BlockStore::SweepExpiredSessions() {
  // The candidates, without the lock; each is read again under it, so that
  // a session written meanwhile stays.
  std::vector<std::string> expired;
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), handles_[kSessions]));
    const absl::Time now = absl::Now();
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      absl::StatusOr<SessionRecord> rec =
          ParseSession(it->key().ToString(), absl::string_view(it->value().data(), it->value().size()));
      if (!rec.ok() || now - rec->updated > options_.session_ttl) expired.push_back(it->key().ToString());
    }
  }
  int dropped = 0;
  for (const std::string& id : expired) {
    absl::MutexLock lock(&mu_);
    std::string value;
    if (!db_->Get(rocksdb::ReadOptions(), handles_[kSessions], id, &value).ok()) continue;
    absl::StatusOr<SessionRecord> rec = ParseSession(id, value);
    if (rec.ok() && absl::Now() - rec->updated <= options_.session_ttl) continue;
    rocksdb::WriteBatch batch;
    batch.Delete(handles_[kSessions], id).PermitUncheckedError();
    if (Write(&batch, /*sync=*/false).ok()) {
      --sessions_;
      ++dropped;
    }
  }
  return dropped;
}

BlockStore::Stats BlockStore::stats() const {
  absl::MutexLock lock(&mu_);
  Stats s;
  s.blocks = static_cast<int64_t>(index_.size());
  s.block_bytes = bytes_;
  s.capacity_bytes = options_.capacity_bytes;
  s.sessions = sessions_;
  s.evictions = evictions_;
  s.corrupt_reads = corrupt_reads_;
  return s;
}

}  // namespace moemesh
