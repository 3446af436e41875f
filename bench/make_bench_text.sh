#!/usr/bin/env bash
# Assembles the tokenizer benchmark's documents: English and Chinese fortunes
# (Debian's fortune packages, installed if missing) and the project's C++
# sources, as {"text": ...} lines, about 4 MB.
set -euo pipefail
out=${1:-/tmp/moemesh_tokenizer_bench.jsonl}
cd "$(dirname "$0")/.."
corpus=$(mktemp -d)
bash tools/train/prepare_corpus.sh "$corpus" > /dev/null
python3 - "$corpus" "$out" <<'PY'
import glob, json, os, sys
corpus, out = sys.argv[1], sys.argv[2]
docs = []
for path in sorted(glob.glob(os.path.join(corpus, "*", "*"))):
    text = open(path, encoding="utf-8", errors="replace").read()
    docs += [d for d in text.split("\n%\n") if d.strip()]
for path in sorted(glob.glob("core/**/*.cc", recursive=True) + glob.glob("core/**/*.h", recursive=True)):
    docs.append(open(path, encoding="utf-8").read())
with open(out, "w", encoding="utf-8") as f:
    for d in docs:
        f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
PY
rm -rf "$corpus"
