"""CUDA for Debian's offline Bazel, which has no CUDA rules: nvcc from
/usr/local/cuda compiles each .cu in a genrule named <name>_nvcc, and a
cc_library links the objects with the C++ sources. The same flags as
CMake's CUDA build (sm_90a SASS and sm_90 PTX, C++17, -O2). Targets are tagged "cuda". Unlike
CMake, where CUDA is optional, the Bazel build needs /usr/local/cuda."""

load("@rules_cc//cc:defs.bzl", "cc_library")

NVCC = "/usr/local/cuda/bin/nvcc"

def moemesh_cuda_library(name, srcs, hdrs = [], deps = [], nvcc_hdrs = [], **kwargs):
    """`nvcc_hdrs`: headers of other packages that the .cu files include
    (a genrule sees only the files it is given)."""
    cu = [s for s in srcs if s.endswith(".cu")]
    cc = [s for s in srcs if not s.endswith(".cu")]
    objs = [s + ".o" for s in cu]
    native.genrule(
        name = name + "_nvcc",
        srcs = cu + native.glob(["*.h", "*.cuh"]) + nvcc_hdrs,
        outs = objs,
        cmd = " && ".join([
            "%s -std=c++17 -O2 -DNDEBUG -gencode arch=compute_90a,code=sm_90a -gencode arch=compute_90,code=compute_90 -Xcompiler -fPIC -I. -c $(location %s) -o $(location %s)" %
            (NVCC, s, o)
            for s, o in zip(cu, objs)
        ]),
        tags = ["cuda"],
    )
    cc_library(
        name = name,
        srcs = cc + objs,
        hdrs = hdrs,
        deps = deps + ["//third_party/cuda:cudart_static"],
        tags = ["cuda"],
        **kwargs
    )
