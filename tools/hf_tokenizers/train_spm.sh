#!/usr/bin/env bash
# Trains the small SentencePiece model used by the tokenizer tests
# (tests/fixtures/tokenizers/spm_bpe.model) with Debian's spm_train, on the
# English and Chinese fortunes; BPE with byte fallback, as Llama 2's.
set -euo pipefail
cd "$(dirname "$0")/../.."
corpus=$(mktemp -d)
bash tools/train/prepare_corpus.sh "$corpus" > /dev/null
cat "$corpus"/en/* "$corpus"/zh/* | sed 's/\x1b\[[0-9;]*m//g' > "$corpus/all.txt"
spm_train --input="$corpus/all.txt" --model_prefix=tests/fixtures/tokenizers/spm_bpe \
  --model_type=bpe --vocab_size=4000 --byte_fallback=true --character_coverage=0.98 \
  --max_sentence_length=8192 --input_sentence_size=200000 --shuffle_input_sentence=true \
  --seed_sentencepiece_size=200000 --minloglevel=2
rm -f tests/fixtures/tokenizers/spm_bpe.vocab
rm -rf "$corpus"

# Reference ids and texts from the library's own tools, for single-line test
# strings (spm_encode reads lines).
python3 - <<'PY'
import json, subprocess
d = "tests/fixtures/tokenizers/"
texts = [json.loads(l)["text"] for l in open(d + "fortune-moe.jsonl", encoding="utf-8")]
texts = [t for t in texts if t and "\n" not in t and "\r" not in t and t.strip() == t]
run = lambda args, inp: subprocess.run(args, input=inp.encode(), capture_output=True, check=True).stdout.decode().split("\n")
ids = run(["spm_encode", "--model", d + "spm_bpe.model", "--output_format=id"], "\n".join(texts) + "\n")
dec = run(["spm_decode", "--model", d + "spm_bpe.model", "--input_format=id"], "\n".join(ids[:len(texts)]) + "\n")
with open(d + "spm_bpe.jsonl", "w", encoding="utf-8") as f:
    for t, i, x in zip(texts, ids, dec):
        f.write(json.dumps({"text": t, "ids": [int(v) for v in i.split()], "decoded": x}, ensure_ascii=False) + "\n")
PY
