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

Quantized variants (QUANTIZED) store their linear layers as the published
formats do: 4-bit GPTQ (qweight [in / 8, out], qzeros with each zero point
minus one, fp16 scales, g_idx; act-order too) and AWQ (GEMM layout, qweight
[in, out / 8] in AWQ's nibble order, zero points), quantized here by
round-to-nearest, and FP8 e4m3 blocks with weight_scale_inv (DeepSeek-V3's
layout); config.json carries the quantization_config. Their reference is
transformers on the dequantized weights (each code's value as the format
defines it, in fp32), the other tensors bf16.

Usage: make_fixtures.py --out tests/fixtures [--only NAME ...]
"""
import argparse
import json
import os
import shutil

import re

import torch
import transformers
from safetensors.torch import load_file, save_file

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

# Linear layers that quantized checkpoints store quantized: attention and
# experts for GPTQ / AWQ (as AutoGPTQ and AutoAWQ quantize Mixtral and
# Qwen3-MoE; the router stays), every projection for DeepSeek-V3's FP8.
INT4_LAYERS = re.compile(r"model\.layers\.\d+\.(self_attn\.[qkvo]_proj|block_sparse_moe\.experts\.\d+\.w[123]|"
                         r"mlp\.experts\.\d+\.(gate|up|down)_proj)\.weight$")
FP8_LAYERS = re.compile(r"model\.layers\.\d+\.(self_attn\.(q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)|"
                        r"mlp\.(experts\.\d+\.|shared_experts\.)?(gate|up|down)_proj)\.weight$")

# name: (format, base config, quantizer options, seed). Expert widths are
# multiples of the 32-column groups.
QUANTIZED = {
    "mixtral_gptq": ("gptq", lambda: mixtral(intermediate_size=64),
                     dict(group=32, sym=True, act_order=False), 4001),
    "mixtral_awq": ("awq", lambda: mixtral(intermediate_size=64), dict(group=32), 4002),
    "qwen3_moe_gptq_actorder": ("gptq", lambda: qwen3_moe(),
                                dict(group=32, sym=False, act_order=True), 4003),
    "deepseek_v3_fp8": ("fp8", lambda: VARIANTS["deepseek_v3"](), dict(block=(16, 32)), 4004),
}


def to_int32(words):
    """uint32 values held in int64 as the int32 tensors the formats store."""
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def pack_nibbles(codes, order):
    """Packs the last dimension of integer `codes` eight to a word: nibble j
    of word p holds codes[..., 8 p + order[j]]."""
    words = torch.zeros(codes.shape[:-1] + (codes.shape[-1] // 8,), dtype=torch.int64)
    for j, k in enumerate(order):
        words |= codes[..., k::8].to(torch.int64) << (4 * j)
    return to_int32(words)


def int4_groups(w, g_idx, groups, sym):
    """Scales (rounded to fp16) and zero points per (group, output), and the
    codes, by round-to-nearest."""
    rows, cols = w.shape
    scales = torch.empty(groups, rows)
    zeros = torch.empty(groups, rows, dtype=torch.int64)
    codes = torch.empty(rows, cols, dtype=torch.int64)
    for g in range(groups):
        cols_g = (g_idx == g).nonzero().flatten()
        wg = w[:, cols_g]
        if sym:
            s = wg.abs().amax(1) / 7
            z = torch.full((rows,), 8, dtype=torch.int64)
        else:
            lo, hi = wg.amin(1).clamp(max=0), wg.amax(1).clamp(min=0)
            s = (hi - lo) / 15
            z = torch.round(-lo / torch.where(s > 0, s, 1)).to(torch.int64).clamp(0, 15)
        s = torch.where(s > 0, s, 1).half().float()
        scales[g], zeros[g] = s, z
        codes[:, cols_g] = torch.round(wg / s[:, None] + z[:, None]).to(torch.int64).clamp(0, 15)
    return scales, zeros, codes


def gptq(w, group, sym, act_order, gen):
    """A GPTQ (v1) layer: its tensors and the weights they mean."""
    rows, cols = w.shape
    g_idx = torch.arange(cols) // group
    if act_order:  # inputs quantized in another order: each input names its group
        g_idx = torch.empty(cols, dtype=torch.int64)
        g_idx[torch.randperm(cols, generator=gen)] = torch.arange(cols) // group
    scales, zeros, codes = int4_groups(w, g_idx, cols // group, sym)
    stored_zeros = (zeros - 1) & 15  # v1 stores each zero point minus one
    read_zeros = stored_zeros + 1    # and readers add it back (0 reads as 16)
    deq = (codes - read_zeros[g_idx].T) * scales[g_idx].T
    tensors = {
        "qweight": pack_nibbles(codes.contiguous(), range(8)).T.contiguous(),  # [in / 8, out]
        "qzeros": pack_nibbles(stored_zeros, range(8)),                        # [groups, out / 8]
        "scales": scales.half(),
        "g_idx": g_idx.to(torch.int32),
    }
    return tensors, deq


AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def awq(w, group, gen):
    """An AWQ (GEMM) layer: its tensors and the weights they mean."""
    rows, cols = w.shape
    g_idx = torch.arange(cols) // group
    scales, zeros, codes = int4_groups(w, g_idx, cols // group, sym=False)
    deq = (codes - zeros[g_idx].T) * scales[g_idx].T
    tensors = {
        "qweight": pack_nibbles(codes.T.contiguous(), AWQ_ORDER),  # [in, out / 8]
        "qzeros": pack_nibbles(zeros, AWQ_ORDER),                  # [groups, out / 8]
        "scales": scales.half(),
    }
    return tensors, deq


def fp8(w, block, gen):
    """FP8 e4m3 weights with a scale a block (weight_scale_inv: the factor
    that gives the weights back), and the weights they mean."""
    rows, cols = w.shape
    br, bc = block
    grid = (-(-rows // br), -(-cols // bc))
    scale = torch.empty(grid)
    codes = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    deq = torch.empty(rows, cols)
    for i in range(grid[0]):
        for j in range(grid[1]):
            blk = w[i * br:(i + 1) * br, j * bc:(j + 1) * bc]
            s = float(blk.abs().max()) / 448 or 1.0
            q = (blk / s).to(torch.float8_e4m3fn)
            scale[i, j] = s
            codes[i * br:(i + 1) * br, j * bc:(j + 1) * bc] = q
            deq[i * br:(i + 1) * br, j * bc:(j + 1) * bc] = q.float() * s
    return {"weight": codes, "weight_scale_inv": scale}, deq


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


def save_random(config, seed, out, max_shard_size="50GB"):
    """A model of `config` with randomize()'s weights, saved in bf16 to `out`."""
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize(model, seed)
    shutil.rmtree(out, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(out, max_shard_size=max_shard_size)


def make(name, out_root, seed):
    out = os.path.join(out_root, name)
    save_random(VARIANTS[name](), seed, out, max_shard_size="150KB" if name in SHARDED else "50GB")
    # Reload from disk so the reference sees exactly the saved bf16 weights.
    record(name, out, out, seed)


def record(name, out, weights_dir, seed):
    """Writes out/reference.* from the model in `weights_dir`."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        weights_dir, dtype=torch.float32, attn_implementation="eager").cuda().eval()
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


def make_quantized(name, out_root):
    method, base, opts, seed = QUANTIZED[name]
    out = os.path.join(out_root, name)
    save_random(base(), seed, out)
    path = os.path.join(out, "model.safetensors")
    bf16 = load_file(path)
    gen = torch.Generator().manual_seed(seed + 2)
    layers = FP8_LAYERS if method == "fp8" else INT4_LAYERS
    quantize = {"gptq": gptq, "awq": awq, "fp8": fp8}[method]
    stored, dequantized, count = {}, {}, 0
    for tname, t in sorted(bf16.items()):
        if layers.match(tname):
            tensors, deq = quantize(t.float(), gen=gen, **opts)
            prefix = tname[:-len("weight")]
            stored.update({prefix + k: v.contiguous() for k, v in tensors.items()})
            dequantized[tname] = deq.contiguous()
            count += 1
        else:
            stored[tname] = t
            dequantized[tname] = t.float()
    assert count > 0, name
    # The reference: transformers on what the stored layers mean, in fp32.
    ref_dir = out + ".dequantized"
    shutil.rmtree(ref_dir, ignore_errors=True)
    shutil.copytree(out, ref_dir)
    save_file(dequantized, os.path.join(ref_dir, "model.safetensors"), metadata={"format": "pt"})
    record(name, out, ref_dir, seed)
    shutil.rmtree(ref_dir)
    save_file(stored, path, metadata={"format": "pt"})
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    if method == "fp8":
        cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                      "weight_block_size": list(opts["block"])}
    elif method == "gptq":
        cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": opts["group"],
                                      "desc_act": opts["act_order"], "sym": opts["sym"],
                                      "checkpoint_format": "gptq"}
    else:
        cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": opts["group"],
                                      "version": "gemm", "zero_point": True}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    print(f"{name}: {count} layers stored as {method}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    names = args.only or list(VARIANTS) + list(QUANTIZED)
    # Seeds by position among the first variants, so that a variant added
    # later (ADDED, with its own seed) leaves the others' weights as they were.
    first = sorted(n for n in VARIANTS if n not in ADDED)
    for name in sorted(VARIANTS):
        if name in names:
            make(name, args.out, ADDED.get(name) or 1000 + 17 * first.index(name))
    for name in sorted(QUANTIZED):
        if name in names:
            make_quantized(name, args.out)


if __name__ == "__main__":
    main()
