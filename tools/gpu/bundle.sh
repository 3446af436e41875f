#!/usr/bin/env bash
# Builds the GPU tests (ctest label `gpu`) here, for sm_90, and bundles them
# with the shared libraries they need (not libc, not the NVIDIA driver's)
# into .gpu-bundle/, which the device tool carries to the GPU machine;
# tools/gpu/run.sh runs them there.
#   tools/gpu/bundle.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
tests=$(cd "$build" && ctest -L gpu --show-only=json-v1 |
        python3 -c 'import json,sys; [print(t["command"][0]) for t in json.load(sys.stdin)["tests"]]')
targets=$(for t in $tests; do basename "$t"; done)
ninja -C "$build" $targets > /dev/null
rm -rf .gpu-bundle
mkdir -p .gpu-bundle/bin .gpu-bundle/lib
for t in $tests; do
  cp "$t" .gpu-bundle/bin/
  ldd "$t" | awk '$3 ~ /^\// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libcuda.so*|libnvidia*) ;;
      *) cp -n "$lib" .gpu-bundle/lib/ ;;
    esac
  done
done
du -sh .gpu-bundle | cut -f1 | xargs echo "gpu bundle:"
ls .gpu-bundle/bin
