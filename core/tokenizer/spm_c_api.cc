// libmoemesh_spm.so: a C interface over libsentencepiece, loaded by
// spm_shim.cc with dlopen(RTLD_LOCAL | RTLD_DEEPBIND). Debian's
// libsentencepiece carries its own copy of protobuf (3.14) that must not
// meet the process's libprotobuf (3.21, used by gRPC): isolating it behind a
// C interface and a private symbol scope keeps the two apart. Every result
// is copied into caller buffers, so no C++ object crosses the boundary.
#include <sentencepiece_processor.h>

#include <cstring>
#include <string>
#include <vector>

namespace {

// memcpy that accepts empty ranges (whose pointers may be null).
void Copy(void* dst, const void* src, size_t n) {
  if (n > 0) std::memcpy(dst, src, n);
}

void SetError(const std::string& msg, char* err, size_t cap) {
  if (err == nullptr || cap == 0) return;
  size_t n = std::min(msg.size(), cap - 1);
  Copy(err, msg.data(), n);
  err[n] = '\0';
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) void* mm_spm_load(const char* path, char* err, size_t errcap,
                                                           int* not_found) {
  auto* sp = new sentencepiece::SentencePieceProcessor;
  auto st = sp->Load(path);
  if (!st.ok()) {
    SetError(st.ToString(), err, errcap);
    *not_found = st.code() == sentencepiece::util::StatusCode::kNotFound;
    delete sp;
    return nullptr;
  }
  return sp;
}

__attribute__((visibility("default"))) void mm_spm_free(void* h) {
  delete static_cast<sentencepiece::SentencePieceProcessor*>(h);
}

// Returns the number of ids (which may exceed cap: call again with more
// room), or -1 with err set.
__attribute__((visibility("default"))) long mm_spm_encode(void* h, const char* text, size_t len, int* ids,
                                                           size_t cap, char* err, size_t errcap) {
  std::vector<int> out;
  auto st = static_cast<sentencepiece::SentencePieceProcessor*>(h)->Encode(std::string(text, len), &out);
  if (!st.ok()) {
    SetError(st.ToString(), err, errcap);
    return -1;
  }
  Copy(ids, out.data(), std::min(out.size(), cap) * sizeof(int));
  return static_cast<long>(out.size());
}

// Returns the text length (which may exceed cap), or -1 with err set.
__attribute__((visibility("default"))) long mm_spm_decode(void* h, const int* ids, size_t n, char* text,
                                                           size_t cap, char* err, size_t errcap) {
  std::string out;
  auto st = static_cast<sentencepiece::SentencePieceProcessor*>(h)->Decode(n > 0 ? std::vector<int>(ids, ids + n) : std::vector<int>(), &out);
  if (!st.ok()) {
    SetError(st.ToString(), err, errcap);
    return -1;
  }
  Copy(text, out.data(), std::min(out.size(), cap));
  return static_cast<long>(out.size());
}

__attribute__((visibility("default"))) int mm_spm_size(void* h) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(h)->GetPieceSize();
}
__attribute__((visibility("default"))) int mm_spm_bos_id(void* h) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(h)->bos_id();
}
__attribute__((visibility("default"))) int mm_spm_unk_id(void* h) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(h)->unk_id();
}
__attribute__((visibility("default"))) int mm_spm_is_control(void* h, int id) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(h)->IsControl(id);
}
__attribute__((visibility("default"))) int mm_spm_piece_to_id(void* h, const char* piece, size_t len) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(h)->PieceToId(std::string(piece, len));
}
// Copies the piece of `id` (no terminator); returns its length.
__attribute__((visibility("default"))) long mm_spm_id_to_piece(void* h, int id, char* out, size_t cap) {
  const std::string& p = static_cast<sentencepiece::SentencePieceProcessor*>(h)->IdToPiece(id);
  Copy(out, p.data(), std::min(p.size(), cap));
  return static_cast<long>(p.size());
}

}  // extern "C"
