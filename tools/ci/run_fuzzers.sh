#!/usr/bin/env bash
# Runs the libFuzzer targets for a bounded, reproducible number of inputs
# each: the tokenizer's, seeded with the test tokenizers and sample strings;
# the chat-template engine's, seeded with tests/chat_templates; and those of
# model files, request validation and the data channel's frames, seeded with
# fuzz/corpus/ (written by fuzz/make_seeds.py; copied, so runs leave it as
# committed).
#   tools/ci/run_fuzzers.sh BUILD_DIR [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:?usage: run_fuzzers.sh BUILD_DIR [RUNS]}
runs=${2:-${FUZZ_RUNS:-20000}}
corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
mkdir -p "$corpus/tokenizer" "$corpus/chat_template"
cp -r fuzz/corpus/model_files fuzz/corpus/request fuzz/corpus/frame "$corpus/"
i=0
for f in tests/fixtures/tokenizers/*.json; do
  { printf '\x00'; cat "$f"; } > "$corpus/tokenizer/load_$i"
  i=$((i + 1))
done
for mode in 1 2 3 4 5 6 7; do
  for s in "Hello world!" "人生得意须尽欢 😀" "  spaces\t\nand <s> [INST] <|im_start|>" "def f(x): return x**2"; do
    printf "\\x0$mode%s" "$s" > "$corpus/tokenizer/enc_${mode}_$i"
    i=$((i + 1))
  done
done
printf '\x08\x00\x10\x01\x02\x00\x03' > "$corpus/tokenizer/dec_0"
cp tests/chat_templates/*.jinja models/*/chat_template.jinja "$corpus/chat_template/" 2>/dev/null || true
mkdir -p "$build/fuzz-artifacts"
status=0
for fuzzer in tokenizer chat_template model_files request frame; do
  set +e
  "$build/fuzz/${fuzzer}_fuzzer" -runs="$runs" -seed=1 -timeout=10 -max_len=4096 -rss_limit_mb=2048 \
    -artifact_prefix="$build/fuzz-artifacts/${fuzzer}-" -print_final_stats=1 "$corpus/$fuzzer" \
    > "$build/fuzz-$fuzzer.log" 2>&1
  rc=$?
  set -e
  echo "== ${fuzzer}_fuzzer"
  tail -n 15 "$build/fuzz-$fuzzer.log"
  if [ $rc -ne 0 ]; then
    echo "${fuzzer}_fuzzer failed (exit $rc); inputs in $build/fuzz-artifacts/, log in $build/fuzz-$fuzzer.log"
    grep -m 20 -E "ERROR|SUMMARY|==[0-9]+==" "$build/fuzz-$fuzzer.log" || true
    status=$rc
  fi
done
exit $status
