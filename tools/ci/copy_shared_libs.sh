#!/usr/bin/env bash
# Copies the shared libraries PROGRAM needs (as ldd lists them) into DIR,
# less those the machine it goes to provides: the C library's, the NVIDIA
# driver's, and cuBLAS (600 MB; CUDA images and GPU machines have it).
# Used by tools/gpu/bundle.sh and deploy/docker/collect.sh.
#   tools/ci/copy_shared_libs.sh PROGRAM DIR
set -euo pipefail
ldd "$1" | awk '$3 ~ /^\// {print $3}' | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libcuda.so*|libnvidia*|libcublas*) ;;
    *) cp -n "$lib" "$2/" ;;
  esac
done
