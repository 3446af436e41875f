// libFuzzer target for the model files moemesh reads from disk: the first
// byte picks what the rest of the input is.
//   even: a .safetensors file (header, offsets, sizes), opened from a
//         memory file; every tensor's first and last bytes are then read,
//         so an out-of-range one is an ASan report;
//   odd:  config.json text.
// Errors are expected; a crash, sanitizer report or hang is a bug. Build:
// `make fuzz`.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "core/model/config.h"
#include "core/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const char* rest = reinterpret_cast<const char*>(data + 1);
  const size_t n = size - 1;
  if (data[0] % 2 == 1) {
    (void)moemesh::ParseModelConfig(std::string(rest, n), "config.json");
    return 0;
  }
  const int fd = memfd_create("fuzz.safetensors", 0);
  if (fd < 0) return 0;
  if (write(fd, rest, n) == static_cast<ssize_t>(n)) {
    auto file = moemesh::SafetensorsFile::Open("/proc/self/fd/" + std::to_string(fd));
    if (file.ok()) {
      volatile uint8_t sink = 0;
      for (const auto& [name, info] : (*file)->tensors()) {
        if (info.nbytes == 0) continue;
        const auto* bytes = static_cast<const uint8_t*>(info.data);
        sink = sink + bytes[0] + bytes[info.nbytes - 1];
      }
    }
  }
  close(fd);
  return 0;
}
