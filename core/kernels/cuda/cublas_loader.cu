#include "core/kernels/cuda/cublas_loader.cuh"

#include <dlfcn.h>

#include "absl/strings/str_cat.h"

namespace moemesh {
namespace {

absl::StatusOr<CublasApi> Load() {
  const std::string name = absl::StrCat("libcublas.so.", CUBLAS_VER_MAJOR);
  void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("cannot load cuBLAS (", name, "): ", dlerror(),
                                                      "; install CUDA ", CUBLAS_VER_MAJOR,
                                                      "'s cuBLAS or add its directory to LD_LIBRARY_PATH"));
  }
  CublasApi api;
  bool missing = false;
  auto sym = [&](auto* fn, const char* symbol) {
    void* p = dlsym(lib, symbol);
    missing |= p == nullptr;
    *fn = reinterpret_cast<std::remove_pointer_t<decltype(fn)>>(p);
  };
  // The _v2 names are what cublas_v2.h's macros call.
  sym(&api.create, "cublasCreate_v2");
  sym(&api.destroy, "cublasDestroy_v2");
  sym(&api.set_stream, "cublasSetStream_v2");
  sym(&api.set_workspace, "cublasSetWorkspace_v2");
  sym(&api.gemm_ex, "cublasGemmEx");
  sym(&api.gemm_strided_batched_ex, "cublasGemmStridedBatchedEx");
  sym(&api.gemm_batched_ex, "cublasGemmBatchedEx");
  sym(&api.status_name, "cublasGetStatusName");
  sym(&api.status_string, "cublasGetStatusString");
  if (missing) return absl::FailedPreconditionError(absl::StrCat(name, " lacks functions moemesh needs"));
  return api;  // the library stays loaded for the life of the process
}

}  // namespace

absl::Status CublasApi::Check(cublasStatus_t s, const char* what) const {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", status_name(s), ": ", status_string(s)));
}

absl::StatusOr<const CublasApi*> LoadCublas() {
  static const absl::StatusOr<CublasApi>* const api = new absl::StatusOr<CublasApi>(Load());
  if (!api->ok()) return api->status();
  return &**api;
}

}  // namespace moemesh
