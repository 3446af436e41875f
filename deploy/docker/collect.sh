#!/usr/bin/env bash
# Copies the mesh's programs from a build tree into OUT/bin, the shared
# libraries they need into OUT/lib (not the C library's, not the NVIDIA
# driver's, not cuBLAS: those come from the runtime image), and the demo
# model into OUT/models: what the runtime image holds in /opt/moemesh.
#   deploy/docker/collect.sh BUILD_DIR OUT
set -euo pipefail
build=$1 out=$2
programs="tools/moemesh/moemesh services/gateway/moemesh-gateway services/router/moemesh-router
          services/expert/moemesh-expert services/kvcache/moemesh-kvcache"
mkdir -p "$out/bin" "$out/lib" "$out/models"
for p in $programs; do
  cp "$build/$p" "$out/bin/"
  ldd "$build/$p" | awk '$3 ~ /^\// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libcuda.so*|libnvidia*|libcublas*) ;;
      *) cp -n "$lib" "$out/lib/" ;;
    esac
  done
done
strip --strip-debug "$out"/bin/* "$out"/lib/*
cp -r models/fortune-moe "$out/models/"
