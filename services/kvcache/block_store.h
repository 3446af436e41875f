#ifndef MOEMESH_SERVICES_KVCACHE_BLOCK_STORE_H_
#define MOEMESH_SERVICES_KVCACHE_BLOCK_STORE_H_

#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/kv/block_hash.h"

namespace rocksdb {
class ColumnFamilyHandle;
class DB;
class WriteBatch;
}  // namespace rocksdb

namespace moemesh {

// One full KV block as the kvcache service keeps it: the hash that names
// it, its parent's (or the root's, for a sequence's first block), its
// tokens and its bytes (every layer's rows, in the router's layout).
struct StoredBlock {
  BlockHash hash, parent;
  std::vector<int> tokens;
  std::string data;
};

// A conversation's state: its token history under one model (root), and a
// version that each write increments (for compare-and-set).
struct SessionRecord {
  std::string id;
  BlockHash root;
  std::vector<int> tokens;
  std::vector<int> turn_starts;  // where each turn begins in `tokens`
  int64_t version = 0;
  absl::Time updated;
};

// The kvcache service's storage, over an embedded RocksDB (docs/OPERATIONS.md,
// "KV cache service", says what survives what):
//  - blocks by (root, hash). A put is accepted only if the hash is the chain
//    hash of its parent and tokens, and the parent is the root or a block
//    held under it, so a block cannot be filed under another model's root
//    or under a name it does not have. Every value carries an XXH3-64
//    checksum of its key and contents, verified on each read; a corrupt
//    value reads as DATA_LOSS and is dropped. Blocks past `capacity_bytes`
//    are evicted, least recently used first.
//  - session records by id, dropped `session_ttl` after their last write.
// Each write is one atomic RocksDB batch through the write-ahead log, acked
// after the log write (and its fsync with `sync`). A nearly full disk
// (min_free_bytes) makes writes RESOURCE_EXHAUSTED while reads go on;
// writes resume once space returns.
// Thread-safe.
class BlockStore {
 public:
  struct Options {
    std::string dir;
    int64_t capacity_bytes = int64_t{16} << 30;
    bool sync = false;  // fsync the log before acking a write
    absl::Duration session_ttl = absl::Hours(24 * 7);
    int64_t max_block_bytes = int64_t{64} << 20;
    int max_block_tokens = 1024;
    int max_session_tokens = 1 << 20;
    int max_session_id_bytes = 256;  // as the gateway's (kMaxSessionIdBytes)
    // Writes are refused while the store's filesystem has less free space
    // than this: the room RocksDB needs to flush and compact. (Running
    // RocksDB itself out of space is not an option: Debian's build asserts
    // on the write after a failed one.)
    int64_t min_free_bytes = int64_t{512} << 20;

    absl::Status Validate() const;
  };

  struct Stats {
    int64_t blocks = 0;
    int64_t block_bytes = 0;
    int64_t capacity_bytes = 0;
    int64_t sessions = 0;
    int64_t evictions = 0;      // since Open
    int64_t corrupt_reads = 0;  // since Open
  };

  static absl::StatusOr<std::unique_ptr<BlockStore>> Open(const Options& options);
  ~BlockStore();
  BlockStore(const BlockStore&) = delete;
  BlockStore& operator=(const BlockStore&) = delete;

  // How many of `chain` (hashes of consecutive blocks, the first chained
  // from `root`) are held, counted from the first.
  int LongestPrefix(const BlockHash& root, absl::Span<const BlockHash> chain);
  absl::Status Put(const BlockHash& root, const StoredBlock& block);
  // The same for a block whose tokens and data stay where they are (a
  // request's, shared memory): nothing is copied before RocksDB takes it.
  struct BlockView {
    BlockHash hash, parent;
    absl::Span<const int> tokens;
    absl::string_view data;
  };
  absl::Status Put(const BlockHash& root, const BlockView& block);
  // NOT_FOUND when not held; DATA_LOSS when its checksum fails (then dropped).
  absl::StatusOr<StoredBlock> Get(const BlockHash& root, const BlockHash& hash);
  // The same without copying the bytes: `block` gets all but its data, and
  // `take` is called with the data where RocksDB holds it (valid only
  // during the call), once it has passed its checksum.
  absl::Status Read(const BlockHash& root, const BlockHash& hash, StoredBlock* block,
                    absl::FunctionRef<void(absl::string_view data)> take);

  // NOT_FOUND when unknown or expired.
  absl::StatusOr<SessionRecord> GetSession(const std::string& id);
  // Writes `record` (its version and time are set here and returned).
  // INVALID_ARGUMENT for turn starts that are not ascending offsets into
  // the tokens beginning at 0.
  // expected_version >= 0: only if the stored version is that (0: the
  // session does not exist yet), else ABORTED.
  absl::StatusOr<SessionRecord> PutSession(SessionRecord record, int64_t expected_version = -1);
  // NOT_FOUND when unknown.
  absl::Status DeleteSession(const std::string& id);
  // Sessions in id order after `start_after`, at most `limit`.
  absl::StatusOr<std::vector<SessionRecord>> ListSessions(const std::string& start_after, int limit);
  // Drops sessions past their TTL; returns how many.
  int SweepExpiredSessions();

  Stats stats() const;

 private:
  explicit BlockStore(const Options& options);
  absl::Status Write(rocksdb::WriteBatch* batch, bool sync);
  // RESOURCE_EXHAUSTED when the filesystem has less than min_free_bytes free.
  absl::Status CheckSpace() const;
  absl::Status CheckSessionId(const std::string& id) const;
  bool Held(const std::string& key) const;
  // Marks a block used (LRU), in memory and, unlogged, in its index entry.
  void Touch(const std::string& key);
  // The least recently used blocks, `keep` aside, that make room for
  // `bytes` more; adds their deletion to `batch`.
  std::vector<std::string> EvictFor(int64_t bytes, const std::string& keep, rocksdb::WriteBatch* batch) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Forget(const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);  // drops it from the index
  // Deletes a block (corrupt, or an index row without one) from disk and index.
  void Drop(const std::string& key, bool corrupt);

  struct Entry {
    int64_t bytes = 0;
    std::list<std::string>::iterator lru;
  };

  const Options options_;
  std::unique_ptr<rocksdb::DB> db_;
  // default (unused), blocks, index (a block's size and last use: the LRU
  // rebuilt at Open without reading the blocks), sessions.
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Entry> index_ ABSL_GUARDED_BY(mu_);  // block key -> entry
  std::list<std::string> lru_ ABSL_GUARDED_BY(mu_);                      // least recently used first
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t clock_ ABSL_GUARDED_BY(mu_) = 0;  // last use stamps
  int64_t sessions_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t evictions_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t corrupt_reads_ ABSL_GUARDED_BY(mu_) = 0;
  bool write_failed_ ABSL_GUARDED_BY(mu_) = false;  // the last write hit a full disk
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_KVCACHE_BLOCK_STORE_H_
