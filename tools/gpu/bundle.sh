#!/usr/bin/env bash
# Builds the GPU tests (ctest label `gpu`) here, for sm_90a, and bundles them,
# the mesh's binaries (in the build tree's layout, where `moemesh up` finds
# them) and the shared libraries they all need (not libc, not the NVIDIA
# driver's) into .gpu-bundle/, which the device tool carries to the GPU
# machine, compressed; tools/gpu/run.sh unpacks and runs them there.
#   [BUNDLE_BENCHES="attention_bench ..."] tools/gpu/bundle.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
tests=$(cd "$build" && ctest -L gpu --show-only=json-v1 |
        python3 -c 'import json,sys; [print(t["command"][0]) for t in json.load(sys.stdin)["tests"]]')
targets=$(for t in $tests; do basename "$t"; done)
binaries="tools/moemesh/moemesh services/router/moemesh-router services/gateway/moemesh-gateway services/kvcache/moemesh-kvcache
          services/expert/moemesh-expert"
# BUNDLE_BENCHES: fewer benchmarks, where the tree and the bundle must stay
# within the device tool's 64 MiB.
benches="${BUNDLE_BENCHES:-expert_ffn_bench attention_bench linear_bench gpu_decode_bench ipc_hop_bench mesh_bench prefix_cache_bench}"
ninja -C "$build" $targets $benches moemesh moemesh-router moemesh-gateway moemesh-expert moemesh-kvcache > /dev/null
rm -rf .gpu-bundle
mkdir -p .gpu-bundle/bin .gpu-bundle/lib .gpu-bundle/bench
for b in $benches; do cp "$build/bench/$b" .gpu-bundle/bench/; done
for b in $binaries; do
  mkdir -p ".gpu-bundle/build/$(dirname "$b")"
  cp "$build/$b" ".gpu-bundle/build/$b"
done
for t in $tests $(for b in $binaries; do echo "$build/$b"; done) $(for b in $benches; do echo "$build/bench/$b"; done); do
  case "$t" in "$build"/tools/*|"$build"/services/*/moemesh-*|"$build"/bench/*) ;; *) cp "$t" .gpu-bundle/bin/ ;; esac
  tools/ci/copy_shared_libs.sh "$t" .gpu-bundle/lib
done
# The device tool carries at most 64 MiB with the tree: debug info stays
# here, and the rest travels compressed (run.sh unpacks it).
find .gpu-bundle -type f -exec strip --strip-debug {} +
# xz, not gzip: a tenth smaller, and the tree beside it must stay within 64 MiB.
XZ_OPT="-T0 -6" tar -C .gpu-bundle -cJf .gpu-bundle.tar.xz bin lib build bench
rm -rf .gpu-bundle
mkdir .gpu-bundle
mv .gpu-bundle.tar.xz .gpu-bundle/bundle.tar.xz
du -sh .gpu-bundle/bundle.tar.xz | cut -f1 | xargs echo "gpu bundle (compressed):"
