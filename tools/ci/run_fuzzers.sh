#!/usr/bin/env bash
# Runs the libFuzzer targets for a bounded, reproducible number of inputs,
# starting from seeds made of the test tokenizers and sample strings.
#   tools/ci/run_fuzzers.sh BUILD_DIR [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:?usage: run_fuzzers.sh BUILD_DIR [RUNS]}
runs=${2:-${FUZZ_RUNS:-20000}}
corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
i=0
for f in tests/fixtures/tokenizers/*.json; do
  { printf '\x00'; cat "$f"; } > "$corpus/load_$i"
  i=$((i + 1))
done
for mode in 1 2 3 4 5 6 7; do
  for s in "Hello world!" "人生得意须尽欢 😀" "  spaces\t\nand <s> [INST] <|im_start|>" "def f(x): return x**2"; do
    printf "\\x0$mode%s" "$s" > "$corpus/enc_${mode}_$i"
    i=$((i + 1))
  done
done
printf '\x08\x00\x10\x01\x02\x00\x03' > "$corpus/dec_0"
mkdir -p "$build/fuzz-artifacts"
set +e
"$build/fuzz/tokenizer_fuzzer" -runs="$runs" -seed=1 -timeout=10 -max_len=4096 \
  -artifact_prefix="$build/fuzz-artifacts/" -print_final_stats=1 "$corpus" > "$build/fuzz.log" 2>&1
rc=$?
set -e
tail -n 15 "$build/fuzz.log"
if [ $rc -ne 0 ]; then
  echo "tokenizer_fuzzer failed (exit $rc); inputs in $build/fuzz-artifacts/, log in $build/fuzz.log"
  grep -m 20 -E "ERROR|SUMMARY|==[0-9]+==" "$build/fuzz.log" || true
fi
exit $rc
