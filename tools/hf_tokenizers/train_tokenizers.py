#!/usr/bin/env python3
"""Trains small tokenizer.json files in the layouts real models use, with the
Hugging Face `tokenizers` library, for moemesh's differential tokenizer tests.

    python3 tools/hf_tokenizers/train_tokenizers.py --corpus CORPUS --out DIR

CORPUS is the folder made by tools/train/prepare_corpus.sh (English and
Chinese fortunes); the project's own C++ sources are added as code. Writes
DIR/<name>.json for:
  gpt2         byte-level BPE, GPT-2 regex, added tokens with lstrip/rstrip/single_word
  llama3       Split(Llama-3 regex) + ByteLevel(no regex), ignore_merges, BOS template
  qwen2        NFC, Split(Qwen2 regex) + ByteLevel(no regex), chat special tokens
  llama2       Prepend/Replace normalizers, BPE with byte fallback and <unk>,
               Replace/ByteFallback/Fuse/Strip decoders, <s> template
  mistral      Metaspace pre-tokenizer and decoder, byte fallback, [INST] tokens
  misc         NFKC/Lowercase/Strip normalizers, Whitespace/Digits/Punctuation
               pre-tokenizers, unk
"""
import argparse
import glob
import json
import os

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                        pre_tokenizers, processors, trainers)

LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def corpus_texts(corpus, repo):
    texts = []
    for path in sorted(glob.glob(os.path.join(corpus, "*", "*"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            texts += [t for t in f.read().split("\n%\n") if t.strip()]
    for path in sorted(glob.glob(os.path.join(repo, "core", "**", "*.cc"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            texts.append(f.read())
    return texts


def bpe_trainer(vocab, specials, **kw):
    return trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False, **kw)


def add_byte_tokens(tok, n_specials):
    """Inserts <0x00>..<0xFF> after the special tokens (as SentencePiece
    byte-fallback vocabularies have them) and renumbers the rest."""
    d = json.loads(tok.to_str())
    vocab = d["model"]["vocab"]
    ordered = sorted(vocab.items(), key=lambda kv: kv[1])
    specials, rest = ordered[:n_specials], ordered[n_specials:]
    new = {}
    for t, _ in specials:
        new[t] = len(new)
    for b in range(256):
        new[f"<0x{b:02X}>"] = len(new)
    for t, _ in rest:
        if t not in new:
            new[t] = len(new)
    d["model"]["vocab"] = new
    return Tokenizer.from_str(json.dumps(d))


def gpt2(texts):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.train_from_iterator(texts, bpe_trainer(3000, ["<|endoftext|>"],
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens([AddedToken("<|fim_middle|>", lstrip=True, special=True),
                            AddedToken("[MASK]", lstrip=True, rstrip=True, special=True)])
    tok.add_tokens([AddedToken("hello_world", single_word=True, normalized=False)])
    return tok


def byte_level_split(texts, pattern, specials, vocab, normalizer=None, ignore_merges=False):
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, bpe_trainer(vocab, specials,
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def llama3(texts):
    tok = byte_level_split(texts, LLAMA3, ["<|begin_of_text|>", "<|end_of_text|>",
                                           "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                           4000, ignore_merges=True)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", 0)])])
    return tok


def qwen2(texts):
    tok = byte_level_split(texts, QWEN2, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], 3500,
                           normalizer=normalizers.NFC())
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def llama2(texts):
    specials = ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.train_from_iterator(texts, bpe_trainer(3000, specials, limit_alphabet=300))
    tok = add_byte_tokens(tok, len(specials))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tok


def mistral(texts):
    specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Metaspace(replacement="▁", prepend_scheme="first",
                                                        split=False),
                                     decoders.ByteFallback(), decoders.Fuse()])
    tok.train_from_iterator(texts, bpe_trainer(3000, specials, limit_alphabet=300))
    tok = add_byte_tokens(tok, len(specials))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A </s> <s> $B", special_tokens=[("<s>", 1), ("</s>", 2)])
    return tok


def misc(texts):
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(),
                                           normalizers.Strip(left=True, right=True)])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Punctuation(behavior="isolated")])
    tok.decoder = decoders.Sequence([decoders.Replace("##", ""), decoders.Strip(" ", 0, 0)])
    tok.train_from_iterator(texts, bpe_trainer(2000, ["[UNK]", "[CLS]", "[SEP]"], limit_alphabet=400))
    return tok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--repo", default=".")
    args = ap.parse_args()
    texts = corpus_texts(args.corpus, args.repo)
    os.makedirs(args.out, exist_ok=True)
    for name, fn in [("gpt2", gpt2), ("llama3", llama3), ("qwen2", qwen2), ("llama2", llama2),
                     ("mistral", mistral), ("misc", misc)]:
        tok = fn(texts)
        path = os.path.join(args.out, name + ".json")
        tok.save(path)
        sample = "Hello world! 人生得意 123 <s>"
        print(name, tok.get_vocab_size(), tok.encode(sample).tokens[:20], flush=True)


if __name__ == "__main__":
    main()
