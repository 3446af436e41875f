#!/usr/bin/env bash
# `make demo`: generates text with the single-process engine from the
# bundled demo model (models/fortune-moe), streaming it as it is sampled.
set -euo pipefail
build=${1:-build}
moemesh="$build/tools/moemesh/moemesh"
model=${MOEMESH_DEMO_MODEL:-models/fortune-moe}
threads=$(nproc)

echo "moemesh demo: $model ($(du -sh "$model" | cut -f1)), $threads CPU threads"
echo
i=0
for prompt in "The meaning of life" "A computer" "Never trust" "人生" "明月" "春风"; do
  i=$((i + 1))
  printf '\033[1m%s\033[0m' "$prompt"
  "$moemesh" generate --model "$model" --prompt "$prompt" --max-new-tokens 80 \
    --temperature 0.8 --top-p 0.95 --seed "$i" --threads "$threads"
  echo
done
