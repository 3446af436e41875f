#!/usr/bin/env python3
"""PyTorch beside bench/attention_bench's prefill, on the same GPU and work.

One causal prompt at Mixtral's attention shape (32 query heads over 8 KV
heads of 128), bf16, through torch.nn.functional.scaled_dot_product_attention
with each backend this torch has (flash, cuDNN, memory-efficient), and a
large bf16 GEMM as the ceiling, all measured in this run. TFLOP/s counts
the causal products as attention_bench does:
heads * n (n + 1) / 2 * (d_k + d_v) * 2. Times are medians of CUDA-event-timed
runs after 0.5 s of warm-up. With --moemesh FILE (attention_bench's output)
it prints moemesh's fastest bf16 figure beside the fastest backend's.

  python3 bench/attention_torch.py --tokens 1024,4096,16384,32768 --moemesh attn.txt
"""
import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import expert_ffn_torch  # beside this file

HEADS, KV_HEADS, DIM = 32, 8, 128


def time_gpu(f, iters):
    """Seconds: expert_ffn_torch's median of CUDA-event-timed runs after its warm-up."""
    return expert_ffn_torch.time_gpu(f, iters) / 1e3


def moemesh_figures(path):
    """{tokens: best TFLOP/s} of attention_bench's bf16 Mixtral prefill rows."""
    best = {}
    in_prefill = False
    with open(path) as f:
        for line in f:
            if line.startswith("prefill"):
                in_prefill = True
                continue
            parts = line.split()
            if in_prefill and len(parts) == 6 and parts[0] == "mixtral" and parts[1].startswith("bf16"):
                tokens, tflops = int(parts[2]), float(parts[4])
                best[tokens] = max(best.get(tokens, 0.0), tflops)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="1024,4096,16384,32768")
    parser.add_argument("--moemesh", help="attention_bench's output")
    args = parser.parse_args()
    tokens_list = [int(t) for t in args.tokens.split(",")]
    ours = moemesh_figures(args.moemesh) if args.moemesh else {}

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    gemm = 2 * 8192 ** 3 / time_gpu(lambda: a @ a, 20)
    del a
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; bf16 GEMM {gemm / 1e12:.0f} TFLOP/s")
    backends = [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                ("efficient", SDPBackend.EFFICIENT_ATTENTION)]
    header = f"{'tokens':>8}" + "".join(f" {name:>10}" for name, _ in backends) + "   %GEMM best"
    if ours:
        header += "   moemesh  moemesh/best"
    print("prefill attention, TFLOP/s (causal)\n" + header)
    for n in tokens_list:
        q = torch.randn(1, HEADS, n, DIM, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, KV_HEADS, n, DIM, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(1, KV_HEADS, n, DIM, device="cuda", dtype=torch.bfloat16)
        # GQA as every backend takes it: K and V repeated per query head
        # outside the timed call.
        kr = k.repeat_interleave(HEADS // KV_HEADS, dim=1)
        vr = v.repeat_interleave(HEADS // KV_HEADS, dim=1)
        flops = 2.0 * HEADS * n * (n + 1) / 2 * (2 * DIM)
        row = f"{n:>8}"
        best = 0.0
        for _, backend in backends:
            try:
                with sdpa_kernel(backend):
                    t = time_gpu(lambda: F.scaled_dot_product_attention(q, kr, vr, is_causal=True), 10)
                rate = flops / t / 1e12
                best = max(best, rate)
                row += f" {rate:>10.1f}"
            except RuntimeError:  # a backend this torch or GPU lacks
                row += f" {'-':>10}"
        row += f"   {100 * best * 1e12 / gemm:>10.1f}"
        if ours and n in ours:
            row += f"   {ours[n]:>7.1f}  {ours[n] / best:>12.2f}"
        print(row)


if __name__ == "__main__":
    main()
