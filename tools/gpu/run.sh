#!/usr/bin/env bash
# On the GPU machine, from the repository root: unpacks .gpu-bundle (made
# by tools/gpu/bundle.sh) and runs every test in it with its libraries, writes
# each one's log and JUnit XML under $OUT (or ./gpu-results), and prints a
# summary. Exits non-zero if any test fails.
#   tools/gpu/run.sh          the GPU tests
#   tools/gpu/run.sh bench    the GPU benchmarks instead, and PyTorch's figures
#                             beside them (tables to $OUT/*.txt)
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-gpu-results}
mkdir -p "$out"
bundle=/tmp/moemesh-gpu-bundle
rm -rf "$bundle" && mkdir -p "$bundle"
tar -C "$bundle" -xJf .gpu-bundle/bundle.tar.xz
export LD_LIBRARY_PATH="$bundle/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export MOEMESH_BIN="$bundle/build/tools/moemesh/moemesh"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
if [ "${1:-}" = bench ]; then
  status=0
  for b in "$bundle"/bench/*; do
    "$b" | tee "$out/$(basename "$b").txt" || status=1
  done
  # PyTorch on the same machine and work, beside moemesh's figures.
  python3 bench/expert_ffn_torch.py --moemesh "$out/expert_ffn_bench.txt" | tee "$out/expert_ffn_torch.txt" ||
    status=1
  exit $status
fi
status=0
for t in "$bundle"/bin/*; do
  name=$(basename "$t")
  if "$t" --gtest_output="xml:$out/$name.xml" > "$out/$name.log" 2>&1; then
    echo "PASS $name: $(grep -c '^\[       OK \]' "$out/$name.log") passed, $(grep -c '^\[  SKIPPED \]' "$out/$name.log") skipped"
  else
    status=1
    echo "FAIL $name"
    tail -40 "$out/$name.log"
  fi
done
exit $status
