#!/usr/bin/env python3
"""Trains moemesh's demo model: a small DeepSeek-V3-architecture MoE with its
own byte-level BPE tokenizer, on the English and Chinese fortune databases.

Runs on the GPU machine (torch 2.11, transformers 5.17, tokenizers 0.23) in a
few minutes:
    tools/train/prepare_corpus.sh CORPUS          # on a Debian machine
    python3 tools/train/train_demo.py --corpus CORPUS --out OUT [--minutes 5]

OUT receives what transformers and moemesh both load: config.json,
model.safetensors (bf16), tokenizer.json, tokenizer_config.json,
chat_template.jinja, generation_config.json, plus eval/heldout.jsonl (the held-out fortunes,
never trained on) and eval/reference.json (transformers' perplexity on them,
computed in fp32 with eager attention from the saved bf16 weights).
"""
import argparse
import json
import math
import os
import random
import re
import shutil
import time

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def read_fortunes(corpus):
    """Returns (language, text) for every fortune, cleaned of terminal codes."""
    out = []
    for lang in ("en", "zh"):
        d = os.path.join(corpus, lang)
        for name in sorted(os.listdir(d)):
            with open(os.path.join(d, name), encoding="utf-8", errors="replace") as f:
                raw = f.read()
            for chunk in raw.split("\n%\n"):
                text = ANSI.sub("", chunk).strip("\n")
                text = text.replace("\ufffd", "")
                if len(text.strip()) >= 8:
                    out.append((lang, text))
    return out


def train_tokenizer(texts, vocab_size):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos)])
    return tok


def model_config(vocab_size, bos, eos):
    return transformers.DeepseekV3Config(
        vocab_size=vocab_size, hidden_size=256, intermediate_size=768,
        moe_intermediate_size=320, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, n_routed_experts=8, n_shared_experts=1,
        num_experts_per_tok=2, n_group=4, topk_group=2, routed_scaling_factor=1.0,
        norm_topk_prob=True, first_k_dense_replace=1, q_lora_rank=128,
        kv_lora_rank=64, qk_rope_head_dim=16, qk_nope_head_dim=32, v_head_dim=32,
        max_position_embeddings=1024, rope_interleave=True, tie_word_embeddings=False,
        bos_token_id=bos, eos_token_id=eos, pad_token_id=None,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def batches(seqs, batch_size, seq_len, pad, rng):
    """Packs shuffled sequences into [batch, seq_len] rows."""
    while True:
        rng.shuffle(seqs)
        stream = [t for s in seqs for t in s]
        n = len(stream) // seq_len
        rows = [stream[i * seq_len:(i + 1) * seq_len] for i in range(n)]
        rng.shuffle(rows)
        for i in range(0, len(rows) - batch_size + 1, batch_size):
            yield torch.tensor(rows[i:i + batch_size])


class LoadBalancer:
    """DeepSeek-V3's auxiliary-loss-free balancing: after each step, nudge
    each router's e_score_correction_bias towards under-used experts."""

    def __init__(self, model, rate):
        self.rate = rate
        self.counts = {}
        self.routers = []
        for name, mod in model.named_modules():
            if name.endswith("mlp.gate") and hasattr(mod, "e_score_correction_bias"):
                self.routers.append(mod)
                mod.register_forward_hook(self.hook)

    def hook(self, mod, inputs, output):
        idx = output[2].reshape(-1)
        c = torch.bincount(idx, minlength=mod.num_experts).float()
        self.counts[id(mod)] = self.counts.get(id(mod), 0) + c

    @torch.no_grad()
    def step(self):
        for mod in self.routers:
            c = self.counts.pop(id(mod), None)
            if c is None:
                continue
            mod.e_score_correction_bias += self.rate * torch.sign(c.mean() - c)


@torch.no_grad()
def heldout_nll(model, seqs):
    total, count = 0.0, 0
    for s in seqs:
        ids = torch.tensor([s]).cuda()
        logits = model(ids).logits[0, :-1].double()
        nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
        total += float(nll)
        count += ids.shape[1] - 1
    return total, count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--epochs", type=float, default=6.0)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--heldout", type=int, default=120)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    fortunes = read_fortunes(args.corpus)
    rng.shuffle(fortunes)
    # Held out: the same share of each language, never seen in training.
    held = [f for f in fortunes if f[0] == "en"][:args.heldout // 2] + \
           [f for f in fortunes if f[0] == "zh"][:args.heldout // 2]
    held_set = set(t for _, t in held)
    rest = [t for _, t in fortunes if t not in held_set]
    # A validation split picks the stopping step; the held-out split is only
    # used for the final figure.
    val, train = rest[:args.heldout], rest[args.heldout:]
    print(f"fortunes: {len(fortunes)} ({len(train)} train, {len(val)} validation, "
          f"{len(held)} held out)", flush=True)

    tok = train_tokenizer(train, args.vocab)
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    encode = lambda t: tok.encode(t).ids + [eos]  # BOS added by the post-processor
    train_seqs = [encode(t) for t in train]
    held_seqs = [encode(t) for _, t in held]
    val_stream = [t for v in val for t in encode(v)]
    val_rows = torch.tensor([val_stream[i:i + 256] for i in range(0, len(val_stream) - 256, 256)])
    n_tok = sum(len(s) for s in train_seqs)
    print(f"tokenizer: vocab {tok.get_vocab_size()}, {n_tok} training tokens", flush=True)

    config = model_config(tok.get_vocab_size(), bos, eos)
    config._attn_implementation = "sdpa"
    model = transformers.DeepseekV3ForCausalLM(config).cuda()
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M", flush=True)
    balancer = LoadBalancer(model, rate=1e-3)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)
    data = batches(train_seqs, batch_size=64, seq_len=256, pad=None, rng=rng)
    budget = args.minutes * 60
    total_steps = int(args.epochs * n_tok / (64 * 256))
    start = time.time()
    step = 0
    warmup = 50
    best_val, best_state, since_best = float("inf"), None, 0
    model.train()
    while True:
        elapsed = time.time() - start
        if step % 50 == 0:
            model.eval()
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                v = model(val_rows.cuda(), labels=val_rows.cuda()).loss.item()
            model.train()
            if v < best_val:
                best_val, since_best = v, 0
                best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
            else:
                since_best += 1
            print(f"step {step} validation loss {v:.3f} (best {best_val:.3f})", flush=True)
            if since_best >= 6:
                break
        if elapsed > budget or step >= total_steps:
            break
        frac = min(1.0, step / total_steps)
        lr = 2e-3 * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        x = next(data).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        balancer.step()
        if step % 200 == 0:
            print(f"step {step} t={elapsed:.0f}s lr={lr:.2e} loss={loss.item():.3f}", flush=True)
        step += 1

    os.makedirs(args.out, exist_ok=True)
    model.load_state_dict(best_state)
    model.eval()
    model.to(torch.bfloat16).save_pretrained(args.out)
    tok.save(os.path.join(args.out, "tokenizer.json"))
    with open(os.path.join(args.out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS,
                   "eos_token": EOS, "pad_token": PAD, "add_bos_token": True,
                   "model_max_length": config.max_position_embeddings}, f, indent=1)
    # The chat template (tools/train/fortune_chat_template.jinja) beside it.
    shutil.copy(os.path.join(os.path.dirname(os.path.abspath(__file__)), "fortune_chat_template.jinja"),
                os.path.join(args.out, "chat_template.jinja"))
    gen = transformers.GenerationConfig(bos_token_id=bos, eos_token_id=eos, do_sample=True,
                                        temperature=0.8, top_p=0.95)
    gen.save_pretrained(args.out)

    # transformers' held-out perplexity, fp32 eager, from the saved files.
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        args.out, dtype=torch.float32, attn_implementation="eager").cuda().eval()
    nll, count = heldout_nll(ref, held_seqs)
    ppl = math.exp(nll / count)
    os.makedirs(os.path.join(args.out, "eval"), exist_ok=True)
    with open(os.path.join(args.out, "eval", "heldout.jsonl"), "w", encoding="utf-8") as f:
        for lang, t in held:
            f.write(json.dumps({"lang": lang, "text": t}, ensure_ascii=False) + "\n")
    with open(os.path.join(args.out, "eval", "reference.json"), "w") as f:
        json.dump({"perplexity": ppl, "nll_sum": nll, "predicted_tokens": count,
                   "sequences": len(held_seqs), "uniform_perplexity": tok.get_vocab_size(),
                   "heldout_token_ids": held_seqs, "train_steps": step,
                   "train_tokens": n_tok, "best_validation_loss": best_val, "transformers": transformers.__version__,
                   "torch": torch.__version__}, f)
    print(f"held-out perplexity (transformers fp32): {ppl:.3f} over {count} tokens "
          f"(uniform: {tok.get_vocab_size()})", flush=True)
    for prompt in ["The ", "A computer ", "Life is ", "人生", "明月"]:
        ids = torch.tensor([tok.encode(prompt).ids]).cuda()
        out = ref.generate(ids, max_new_tokens=40, do_sample=True, temperature=0.8, top_p=0.95)
        print(repr(tok.decode(out[0].tolist(), skip_special_tokens=True)), flush=True)


if __name__ == "__main__":
    main()
