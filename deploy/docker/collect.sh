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
  tools/ci/copy_shared_libs.sh "$build/$p" "$out/lib"
done
strip --strip-debug "$out"/bin/* "$out"/lib/*
cp -r models/fortune-moe "$out/models/"
