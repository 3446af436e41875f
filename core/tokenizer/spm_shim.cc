#include "core/tokenizer/spm_shim.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>

#ifndef MOEMESH_SPM_LIBRARY
#define MOEMESH_SPM_LIBRARY "libmoemesh_spm.so"
#endif

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MM_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define MM_SANITIZED 1
#endif

// The sanitizers' runtime refuses RTLD_DEEPBIND; sanitized builds (the
// fuzzers) load no libprotobuf, so they do not need it.
#ifdef MM_SANITIZED
constexpr int kDlopenFlags = RTLD_NOW | RTLD_LOCAL;
#else
constexpr int kDlopenFlags = RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND;
#endif

namespace moemesh {
namespace {

// The C interface of libmoemesh_spm.so (spm_c_api.cc).
struct Api {
  void* (*load)(const char*, char*, size_t, int*);
  void (*free)(void*);
  long (*encode)(void*, const char*, size_t, int*, size_t, char*, size_t);
  long (*decode)(void*, const int*, size_t, char*, size_t, char*, size_t);
  int (*size)(void*);
  int (*bos_id)(void*);
  int (*unk_id)(void*);
  int (*is_control)(void*, int);
  int (*piece_to_id)(void*, const char*, size_t);
  long (*id_to_piece)(void*, int, char*, size_t);
  std::string error;  // why loading failed
};

const Api& GetApi() {
  static Api* api = [] {
    auto* a = new Api{};
    const char* env = std::getenv("MOEMESH_SPM_LIBRARY");
    const char* path = env != nullptr && *env != '\0' ? env : MOEMESH_SPM_LIBRARY;
    // A private symbol scope: the library's bundled protobuf stays its own.
    void* lib = dlopen(path, kDlopenFlags);
    if (lib == nullptr) {
      a->error = std::string("cannot load the SentencePiece support library ") + path + ": " + dlerror() +
                 " (set MOEMESH_SPM_LIBRARY to its path)";
      return a;
    }
    auto sym = [&](const char* name) { return dlsym(lib, name); };
    a->load = reinterpret_cast<decltype(a->load)>(sym("mm_spm_load"));
    a->free = reinterpret_cast<decltype(a->free)>(sym("mm_spm_free"));
    a->encode = reinterpret_cast<decltype(a->encode)>(sym("mm_spm_encode"));
    a->decode = reinterpret_cast<decltype(a->decode)>(sym("mm_spm_decode"));
    a->size = reinterpret_cast<decltype(a->size)>(sym("mm_spm_size"));
    a->bos_id = reinterpret_cast<decltype(a->bos_id)>(sym("mm_spm_bos_id"));
    a->unk_id = reinterpret_cast<decltype(a->unk_id)>(sym("mm_spm_unk_id"));
    a->is_control = reinterpret_cast<decltype(a->is_control)>(sym("mm_spm_is_control"));
    a->piece_to_id = reinterpret_cast<decltype(a->piece_to_id)>(sym("mm_spm_piece_to_id"));
    a->id_to_piece = reinterpret_cast<decltype(a->id_to_piece)>(sym("mm_spm_id_to_piece"));
    if (!a->load || !a->free || !a->encode || !a->decode || !a->size || !a->bos_id || !a->unk_id ||
        !a->is_control || !a->piece_to_id || !a->id_to_piece) {
      a->error = std::string(path) + " lacks the moemesh SentencePiece interface";
      a->load = nullptr;
    }
    return a;
  }();
  return *api;
}

class SpmModelImpl : public SpmModel {
 public:
  SpmModelImpl(const Api& api, void* h) : api_(api), h_(h) {}
  ~SpmModelImpl() override { api_.free(h_); }

  bool Encode(const std::string& text, std::vector<int>* ids, std::string* error) const override {
    char err[512];
    ids->resize(text.size() + 16);
    long n = api_.encode(h_, text.data(), text.size(), ids->data(), ids->size(), err, sizeof err);
    if (n >= 0 && static_cast<size_t>(n) > ids->size()) {
      ids->resize(n);
      n = api_.encode(h_, text.data(), text.size(), ids->data(), ids->size(), err, sizeof err);
    }
    if (n < 0) {
      *error = err;
      return false;
    }
    ids->resize(n);
    return true;
  }
  bool Decode(const std::vector<int>& ids, std::string* text, std::string* error) const override {
    char err[512];
    text->resize(ids.size() * 8 + 16);
    long n = api_.decode(h_, ids.data(), ids.size(), text->data(), text->size(), err, sizeof err);
    if (n >= 0 && static_cast<size_t>(n) > text->size()) {
      text->resize(n);
      n = api_.decode(h_, ids.data(), ids.size(), text->data(), text->size(), err, sizeof err);
    }
    if (n < 0) {
      *error = err;
      return false;
    }
    text->resize(n);
    return true;
  }
  int size() const override { return api_.size(h_); }
  int bos_id() const override { return api_.bos_id(h_); }
  int unk_id() const override { return api_.unk_id(h_); }
  bool IsControl(int id) const override { return api_.is_control(h_, id) != 0; }
  int PieceToId(const std::string& piece) const override { return api_.piece_to_id(h_, piece.data(), piece.size()); }
  std::string IdToPiece(int id) const override {
    std::string p(64, '\0');
    long n = api_.id_to_piece(h_, id, p.data(), p.size());
    if (n > static_cast<long>(p.size())) {
      p.resize(n);
      api_.id_to_piece(h_, id, p.data(), p.size());
    }
    p.resize(n);
    return p;
  }

 private:
  const Api& api_;
  void* h_;
};

}  // namespace

std::unique_ptr<SpmModel> SpmModel::Load(const std::string& path, std::string* error, bool* not_found) {
  const Api& api = GetApi();
  if (api.load == nullptr) {
    *error = api.error;
    *not_found = false;
    return nullptr;
  }
  char err[512] = {0};
  int nf = 0;
  void* h = api.load(path.c_str(), err, sizeof err, &nf);
  if (h == nullptr) {
    *error = err;
    *not_found = nf != 0;
    return nullptr;
  }
  return std::make_unique<SpmModelImpl>(api, h);
}

}  // namespace moemesh
