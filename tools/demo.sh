#!/usr/bin/env bash
# `make demo`: serves the bundled demo model (models/fortune-moe) with its
# experts on two expert workers (moemesh-expert, one shard each, on free
# loopback ports) and streams answers to English and Chinese prompts from
# the moemesh CLI, which runs attention, gating and sampling against them.
set -euo pipefail
build=${1:-build}
moemesh="$build/tools/moemesh/moemesh"
expert="$build/services/expert/moemesh-expert"
model=${MOEMESH_DEMO_MODEL:-models/fortune-moe}
shards=2

logs=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$logs"
}
trap cleanup EXIT INT TERM

addresses=""
for ((i = 0; i < shards; i++)); do
  "$expert" --model "$model" --shard-index "$i" --num-shards "$shards" --port 0 > "$logs/expert$i.out" 2> "$logs/expert$i.err" &
  pids+=($!)
  for _ in $(seq 1 100); do
    grep -q "listening on" "$logs/expert$i.out" 2>/dev/null && break
    if ! kill -0 "${pids[-1]}" 2>/dev/null; then
      echo "moemesh demo: expert worker $i failed to start:" >&2
      cat "$logs/expert$i.err" >&2
      exit 1
    fi
    sleep 0.1
  done
  address=$(sed -n 's/^listening on //p' "$logs/expert$i.out")
  [ -n "$address" ] || { echo "moemesh demo: expert worker $i did not report its address" >&2; exit 1; }
  addresses+="${addresses:+,}$address"
done

echo "moemesh demo: $model ($(du -sh "$model" | cut -f1)), experts on $shards workers: $addresses"
echo
i=0
for prompt in "The meaning of life" "A computer" "Never trust" "人生" "明月" "春风"; do
  i=$((i + 1))
  printf '\033[1m%s\033[0m' "$prompt"
  "$moemesh" generate --model "$model" --prompt "$prompt" --max-new-tokens 80 \
    --temperature 0.8 --top-p 0.95 --seed "$i" --threads "$(nproc)" --experts "$addresses"
  echo
done
