#!/usr/bin/env python3
"""Differential test: moemesh's tokenizer against the Hugging Face tokenizers
library (its Node build, tools/hf_tokenizers) on thousands of strings.

    tokenizer_diff_test.py --moemesh build/tools/moemesh/moemesh [--count 2500]

For every tokenizer under tests/fixtures/tokenizers/ and the demo model's, it
compares the ids of each string with and without special tokens, and the
decoding of Hugging Face's ids. Strings: English and Chinese text and
substrings of it, Korean, emoji, whitespace runs, numbers, code, text around
special tokens, random code points, and random bytes (decoded with
replacement, since neither library accepts invalid UTF-8; that moemesh
rejects raw invalid UTF-8 is checked too). Prints "N passed, N failed".
"""
import argparse
import glob
import json
import os
import random
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_SCRIPT = os.path.join(ROOT, "tools", "hf_tokenizers", "encode.js")


CODE_TEXTS = [
    "core/common/file_util.cc", "core/common/file_util_test.cc", "core/common/subprocess.cc",
    "core/common/subprocess_test.cc", "core/engine/engine.cc", "core/engine/engine_test.cc",
    "core/experts/local_expert_executor.cc", "core/experts/ffn.cc", "core/engine/generation_loop.cc",
    "core/engine/generation_loop_test.cc", "core/engine/kv_cache.cc", "core/engine/kv_cache_test.cc",
    "core/engine/cpu_forward_pass.cc", "core/engine/perplexity.cc", "core/experts/placement.cc",
    "core/experts/placement_test.cc", "core/engine/sampler.cc", "core/engine/sampler_test.cc",
    "core/engine/scheduler.cc", "core/engine/scheduler_test.cc",
]


def real_text():
    texts = []
    with open(os.path.join(ROOT, "models", "fortune-moe", "eval", "heldout.jsonl"), encoding="utf-8") as f:
        texts += [json.loads(l)["text"] for l in f if l.strip()]
    # A fixed list of sources: new files must not shift the random strings.
    for path in CODE_TEXTS:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            texts.append(f.read())
    return texts


def make_strings(count, seed, specials):
    rng = random.Random(seed)
    texts = real_text()
    pieces = ["Hello", "world", "人生", "明月几时有", "한국어", "텍스트", "😀", "🎉", "👍🏽", "🇩🇪",
              "don't", "I'll", "WE'RE", "3.14159", "1,000,000", "2026", "e\u0301", "Ünïcödé",
              "ﬁ", "①②", "Ⅻ", "ｆｕｌｌｗｉｄｔｈ", "İstanbul", "ΣΊΣΥΦΟΣ", "x\u200by", "\u00a0", "\u3000",
              "\t", "\n", "\r\n", "   ", "    \n\n", "def f(x):", "return x**2;", "{}", "<>", "##", "--",
              "▁", "<0x41>", "hello_world", "ohello_world", "_", "'s", "'T"]
    out = ["", " ", "  ", "\n", "a", "A", " a", "a ", "  a  b  ", "x" * 500, " " * 200, "\n" * 50]
    for s in specials:
        out += [s, f" {s} ", f"a{s}b", f"  {s}  x", f"{s}{s}", f"x {s}", f"{s}\n"]
    while len(out) < count:
        kind = rng.randrange(8)
        if kind == 0:  # a whole real text, or a substring of it
            t = rng.choice(texts)
            if len(t) > 400 or rng.random() < 0.5:
                a = rng.randrange(len(t))
                t = t[a:a + rng.randint(1, 300)]
            out.append(t)
        elif kind == 1:  # pieces glued with random separators
            out.append("".join(rng.choice(pieces) + rng.choice(["", " ", "  ", "\n", ", "])
                               for _ in range(rng.randint(1, 12))))
        elif kind == 2:  # random code points (no surrogates), mostly from busy planes
            cps = []
            for _ in range(rng.randint(1, 40)):
                r = rng.random()
                if r < 0.4:
                    cp = rng.randint(0x20, 0x7E)
                elif r < 0.6:
                    cp = rng.randint(0x80, 0x7FF)
                elif r < 0.85:
                    cp = rng.randint(0x800, 0xFFFF)
                else:
                    cp = rng.randint(0x10000, 0x10FFFF)
                if 0xD800 <= cp <= 0xDFFF:
                    cp = 0x20
                cps.append(chr(cp))
            out.append("".join(cps))
        elif kind == 3:  # random bytes, decoded with replacement
            b = bytes(rng.randrange(256) for _ in range(rng.randint(1, 60)))
            out.append(b.decode("utf-8", errors="replace"))
        elif kind == 4:  # whitespace runs around words
            out.append("".join(rng.choice([" ", "\t", "\n", "\r", "\u00a0", "\u3000", "w", "词"])
                               for _ in range(rng.randint(1, 30))))
        elif kind == 5:  # numbers
            out.append(" ".join(str(rng.randint(0, 10 ** rng.randint(1, 12))) for _ in range(rng.randint(1, 6))))
        elif kind == 6 and specials:  # special tokens inside text
            out.append(rng.choice(texts)[:rng.randint(0, 40)] + rng.choice(["", " ", "  "]) +
                       rng.choice(specials) + rng.choice(["", " ", "\n"]) + rng.choice(pieces))
        else:  # code
            t = texts[-1 - rng.randrange(20)]
            a = rng.randrange(len(t))
            out.append(t[a:a + rng.randint(1, 200)])
    return out[:count]


def run(cmd, lines):
    p = subprocess.run(cmd, input="".join(json.dumps(l, ensure_ascii=False) + "\n" for l in lines),
                       capture_output=True, text=True, encoding="utf-8")
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return [json.loads(l) for l in p.stdout.split("\n") if l.strip()]


def special_tokens(path):
    with open(path, encoding="utf-8") as f:
        return [a["content"] for a in json.load(f).get("added_tokens", [])]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moemesh", required=True)
    ap.add_argument("--count", type=int, default=2500)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    tokenizers = sorted(glob.glob(os.path.join(ROOT, "tests", "fixtures", "tokenizers", "*.json")))
    tokenizers.append(os.path.join(ROOT, "models", "fortune-moe", "tokenizer.json"))
    passed = failed = 0
    for path in tokenizers:
        name = os.path.relpath(path, ROOT)
        strings = make_strings(args.count, args.seed, special_tokens(path))
        texts = [{"text": s} for s in strings]
        for special in (False, True):
            flag = ["--add-special-tokens"] if special else []
            ours = run([args.moemesh, "tokenize", "--tokenizer", path] + flag, texts)
            theirs = run(["node", NODE_SCRIPT, path] + flag, texts)
            bad = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a["ids"] != b["ids"]]
            bad += list(range(min(len(ours), len(theirs)), max(len(ours), len(theirs))))
            failed += len(bad)
            passed += len(strings) - len(bad)
            for i in bad[:5]:
                print(f"MISMATCH {name} special={special}: {strings[i]!r}\n  moemesh {ours[i]['ids'] if i < len(ours) else None}"
                      f"\n  hf      {theirs[i]['ids'] if i < len(theirs) else None}")
            if not special:
                ids = [{"ids": t["ids"]} for t in theirs]
                our_text = run([args.moemesh, "detokenize", "--tokenizer", path], ids)
                hf_text = run(["node", NODE_SCRIPT, path, "--decode"], ids)
                dbad = [i for i, (a, b) in enumerate(zip(our_text, hf_text)) if a["text"] != b["text"]]
                failed += len(dbad)
                passed += len(ids) - len(dbad)
                for i in dbad[:5]:
                    print(f"DECODE MISMATCH {name}: ids {ids[i]['ids'][:20]}\n  moemesh {our_text[i]['text']!r}"
                          f"\n  hf      {hf_text[i]['text']!r}")
        print(f"{name}: {len(strings)} strings compared", flush=True)
    # Raw invalid UTF-8 is refused with a clear error, never tokenized.
    p = subprocess.run([args.moemesh, "tokenize", "--tokenizer", tokenizers[0]],
                       input=b'{"text": "ok \xff\xfe"}\n', capture_output=True)
    if p.returncode != 0 and b"UTF-8" in p.stderr:
        passed += 1
    else:
        failed += 1
        print("MISMATCH: invalid UTF-8 was not rejected clearly:", p.stderr)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
