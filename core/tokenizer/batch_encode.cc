#include "core/tokenizer/batch_encode.h"

#include <algorithm>
#include <atomic>
#include <thread>

#include "absl/strings/str_cat.h"

namespace moemesh {

absl::StatusOr<std::vector<std::vector<int>>> EncodeBatch(const Tokenizer& tokenizer,
                                                          absl::Span<const std::string> texts,
                                                          bool add_special_tokens, int threads) {
  std::vector<std::vector<int>> out(texts.size());
  std::vector<absl::Status> errors(texts.size());
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next++; i < texts.size(); i = next++) {
      absl::StatusOr<std::vector<int>> ids = tokenizer.Encode(texts[i], add_special_tokens);
      if (ids.ok()) {
        out[i] = std::move(*ids);
      } else {
        errors[i] = ids.status();
      }
    }
  };
  const int n = std::clamp(threads, 1, static_cast<int>(std::max<size_t>(1, texts.size())));
  std::vector<std::thread> pool;
  for (int t = 1; t < n; ++t) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
  for (size_t i = 0; i < texts.size(); ++i) {
    if (!errors[i].ok()) return absl::Status(errors[i].code(), absl::StrCat("text ", i, ": ", errors[i].message()));
  }
  return out;
}

}  // namespace moemesh
