#!/usr/bin/env python3
"""Builds small random-weight MoE checkpoints and records transformers' outputs.

Runs on the GPU machine (torch 2.11, transformers 5.17). For every variant it
writes tests/fixtures/<name>/ holding:
  config.json, model.safetensors (bf16 weights, hub tensor names; one variant
  is sharded with model.safetensors.index.json),
  reference.safetensors: F32 `prompt_logits` [prompt_len, vocab] and
      `decode_logits` [new_tokens, vocab] (the logits that chose each greedy
      token after the first), I64 `prompt_ids`, `greedy_ids`;
  reference.json: the same ids plus library versions.
Logits are computed in fp32 with eager attention from the bf16 weights, the
greedy continuation through transformers' KV cache (DynamicCache), so dynamic
rope and sliding windows follow the incremental path.

Usage: make_fixtures.py --out tests/fixtures [--only NAME ...]
"""
import argparse
import json
import os
import shutil

import torch
import transformers
from safetensors.torch import save_file

VOCAB = 512
HIDDEN = 64
PROMPT_LEN = 12
NEW_TOKENS = 12

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)


def mixtral(**kw):
    cfg = dict(COMMON, num_hidden_layers=2, intermediate_size=48,
               num_local_experts=8, num_experts_per_tok=2)
    cfg.update(kw)
    return transformers.MixtralConfig(**cfg)


def qwen2_moe(**kw):
    cfg = dict(COMMON, num_hidden_layers=3, intermediate_size=80,
               moe_intermediate_size=32, shared_expert_intermediate_size=48,
               num_experts=8, num_experts_per_tok=2, norm_topk_prob=False,
               decoder_sparse_step=1, mlp_only_layers=[1], qkv_bias=True)
    cfg.update(kw)
    return transformers.Qwen2MoeConfig(**cfg)


def qwen3_moe(**kw):
    cfg = dict(COMMON, num_hidden_layers=2, head_dim=24, intermediate_size=80,
               moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
               norm_topk_prob=True)
    cfg.update(kw)
    return transformers.Qwen3MoeConfig(**cfg)


def olmoe(**kw):
    cfg = dict(COMMON, num_hidden_layers=2, intermediate_size=32,
               num_experts=8, num_experts_per_tok=2, norm_topk_prob=False)
    cfg.update(kw)
    return transformers.OlmoeConfig(**cfg)


def deepseek_v3(**kw):
    cfg = dict(COMMON, num_hidden_layers=3, num_key_value_heads=4,
               intermediate_size=96, moe_intermediate_size=32,
               n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
               n_group=4, topk_group=2, routed_scaling_factor=2.5,
               norm_topk_prob=True, first_k_dense_replace=1,
               q_lora_rank=48, kv_lora_rank=32, qk_rope_head_dim=8,
               qk_nope_head_dim=16, v_head_dim=16, rope_interleave=True)
    cfg.update(kw)
    return transformers.DeepseekV3Config(**cfg)


YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
        "original_max_position_embeddings": 8, "beta_fast": 32.0,
        "beta_slow": 1.0}

# Variants added after the first fixtures were made, and their seeds.
ADDED = {"qwen3_moe_dynamic": 3001}

VARIANTS = {
    "mixtral": lambda: mixtral(),
    "mixtral_sliding": lambda: mixtral(sliding_window=5),
    "mixtral_llama3": lambda: mixtral(rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8}),
    "qwen2_moe": lambda: qwen2_moe(),
    "qwen2_moe_sliding": lambda: qwen2_moe(use_sliding_window=True,
                                           sliding_window=4,
                                           max_window_layers=3),
    "qwen2_moe_linear": lambda: qwen2_moe(rope_parameters={
        "rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
    "qwen3_moe": lambda: qwen3_moe(),
    "qwen3_moe_yarn": lambda: qwen3_moe(rope_parameters=dict(YARN),
                                        max_position_embeddings=32),
    "qwen3_moe_sliding": lambda: qwen3_moe(use_sliding_window=True,
                                           sliding_window=6),
    # Qwen3-MoE with dynamic NTK rope past max_position_embeddings: the GPU
    # mesh once parted from transformers on such a checkpoint (issue #21).
    "qwen3_moe_dynamic": lambda: qwen3_moe(
        max_position_embeddings=16,
        rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0,
                         "factor": 4.0}),
    "olmoe": lambda: olmoe(),
    "olmoe_dynamic": lambda: olmoe(
        max_position_embeddings=16,
        rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0,
                         "factor": 2.0}),
    "deepseek_v3": lambda: deepseek_v3(rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
        "original_max_position_embeddings": 16, "beta_fast": 32.0,
        "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
        max_position_embeddings=64),
    "deepseek_v3_nolora": lambda: deepseek_v3(q_lora_rank=None,
                                              num_hidden_layers=2),
}

SHARDED = {"qwen3_moe"}


def randomize(model, seed):
    """Gives every parameter and buffer distinct values, so that a loader that
    swaps two tensors or ignores a norm weight fails the comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if "inv_freq" in name:
                continue
            if p.dim() == 1 and ("norm" in name or "layernorm" in name):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif "e_score_correction_bias" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:  # biases
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / fan_in ** 0.5))


def make(name, out_root, seed):
    config = VARIANTS[name]()
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize(model, seed)
    out = os.path.join(out_root, name)
    shutil.rmtree(out, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(
        out, max_shard_size="150KB" if name in SHARDED else "50GB")

    # Reload from disk so the reference sees exactly the saved bf16 weights.
    model = transformers.AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, attn_implementation="eager").cuda().eval()
    g = torch.Generator().manual_seed(seed + 1)
    prompt = torch.randint(0, VOCAB, (1, PROMPT_LEN), generator=g).cuda()
    with torch.no_grad():
        cache = transformers.DynamicCache(config=model.config)
        res = model(prompt, past_key_values=cache, use_cache=True)
        prompt_logits = res.logits[0].float()
        tokens, decode_logits = [], []
        nxt = int(prompt_logits[-1].argmax())
        tokens.append(nxt)
        for _ in range(NEW_TOKENS - 1):
            res = model(torch.tensor([[nxt]]).cuda(), past_key_values=res.past_key_values,
                        use_cache=True)
            step = res.logits[0, -1].float()
            decode_logits.append(step)
            nxt = int(step.argmax())
            tokens.append(nxt)
        # The smallest top-1/top-2 gap tells how safe greedy comparison is.
        all_logits = torch.cat([prompt_logits, torch.stack(decode_logits)])
        top2 = all_logits.topk(2, dim=-1).values
        min_gap = float((top2[:, 0] - top2[:, 1]).min())

    save_file({
        "prompt_logits": prompt_logits.cpu().contiguous(),
        "decode_logits": torch.stack(decode_logits).cpu().contiguous(),
        "prompt_ids": prompt[0].cpu().to(torch.int64).contiguous(),
        "greedy_ids": torch.tensor(tokens, dtype=torch.int64),
    }, os.path.join(out, "reference.safetensors"))
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({
            "prompt_ids": prompt[0].tolist(),
            "greedy_ids": tokens,
            "min_top2_gap": min_gap,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        }, f, indent=1)
    files = sorted(os.listdir(out))
    print(f"{name}: {files} greedy={tokens} min_gap={min_gap:.4g}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    names = args.only or list(VARIANTS)
    # Seeds by position among the first variants, so that a variant added
    # later (ADDED, with its own seed) leaves the others' weights as they were.
    first = sorted(n for n in VARIANTS if n not in ADDED)
    for name in sorted(VARIANTS):
        if name in names:
            make(name, args.out, ADDED.get(name) or 1000 + 17 * first.index(name))


if __name__ == "__main__":
    main()
