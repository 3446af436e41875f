#!/usr/bin/env bash
# Builds and tests every Bazel target (the twins of the CMake targets) offline, with
# Debian's bazel-bootstrap against the system libraries. Exits non-zero on failure,
# including when a CMake target has no Bazel twin (tools/ci/bazel_lockstep.py).
# Build flags live in //:.bazelrc; these only size the run for a small shared
# machine. Override with BAZEL_JOBS / BAZEL_RAM_MB.
set -euo pipefail
cd "$(dirname "$0")/../.."

BAZEL="${BAZEL:-bazel}"
JOBS="${BAZEL_JOBS:-2}"
RAM_MB="${BAZEL_RAM_MB:-8192}"
FLAGS=(--jobs="${JOBS}" --local_ram_resources="${RAM_MB}")
if [ "${CI:-}" = "true" ]; then
  FLAGS+=(--color=no --curses=no --show_progress_rate_limit=30)
fi

# The Bazel build compiles the CUDA kernels with /usr/local/cuda/bin/nvcc
# (third_party/bazel/cuda.bzl); CMake makes them optional.
"${BAZEL}" query 'kind("(cc_.*|genrule) rule", //...)' --output=xml | python3 tools/ci/bazel_lockstep.py
"${BAZEL}" build //... "${FLAGS[@]}"
"${BAZEL}" test //... "${FLAGS[@]}" --test_output=errors
