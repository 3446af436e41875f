#!/usr/bin/env bash
# `make demo`: starts the whole mesh on the bundled demo model
# (models/fortune-moe) with `moemesh up` -- two expert workers, a router
# and the gateway, on free loopback ports -- streams answers to English and
# Chinese prompts through the gateway with `moemesh client generate`, and
# stops the mesh.
set -euo pipefail
build=${1:-build}
moemesh="$build/tools/moemesh/moemesh"
model=${MOEMESH_DEMO_MODEL:-models/fortune-moe}

log=$(mktemp)
up_pid=""
cleanup() {
  if [ -n "$up_pid" ]; then
    kill -TERM "$up_pid" 2>/dev/null || true
    wait "$up_pid" 2>/dev/null || true
  fi
  rm -f "$log"
}
trap cleanup EXIT INT TERM

"$moemesh" up --model "$model" --expert-shards 2 --routers 1 --threads "$(nproc)" > "$log" &
up_pid=$!
target=""
for _ in $(seq 1 600); do
  target=$(sed -n 's/^gateway listening on //p' "$log")
  [ -n "$target" ] && break
  if ! kill -0 "$up_pid" 2>/dev/null; then
    echo "moemesh demo: the mesh failed to start:" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.1
done
[ -n "$target" ] || { echo "moemesh demo: the mesh did not start within a minute" >&2; exit 1; }
cat "$log"
echo
i=0
for prompt in "The meaning of life" "A computer" "Never trust" "人生" "明月" "春风"; do
  i=$((i + 1))
  printf '\033[1m%s\033[0m' "$prompt"
  "$moemesh" client generate --target "$target" --prompt "$prompt" --max-new-tokens 80 \
    --temperature 0.8 --top-p 0.95 --seed "$i"
  echo
done
