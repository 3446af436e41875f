#!/usr/bin/env python3
"""PyTorch beside bench/expert_ffn_bench, on the same GPU and the same work.

The routed-expert layer at Mixtral and DeepSeek-V3 shape for 1 to 8192
tokens, rows spread evenly over the experts (row r to expert r % E), bf16
weights, as three PyTorch variants:
  grouped_mm   torch._grouped_mm for both products (where this torch has it)
  matmul_loop  a loop over the experts of torch.matmul
  hf_experts   the experts module of the transformers MoE block
               (MixtralSparseMoeBlock, DeepseekV3MoE), given the same routing;
               it also gathers the rows and scatter-adds the outputs.
Times are medians of CUDA-event-timed runs after 0.5 s of warm-up (the
GPU's sustained state), as expert_ffn_bench does. With --moemesh FILE
(expert_ffn_bench's output) it prints moemesh's
time beside them and its speedup over the fastest PyTorch variant (the
fastest variant's time over moemesh's).

  python3 bench/expert_ffn_torch.py --moemesh expert_ffn_bench.txt
"""
import argparse
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = [("mixtral", 4096, 14336, 8, 2), ("deepseek-v3", 7168, 2048, 256, 8)]
TOKENS = [1, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]


WARM_UP_SECONDS = 0.5  # kSustainedWarmUpSeconds: time in the sustained state, as expert_ffn_bench


def time_gpu(f, iters):
    start = time.perf_counter()
    while True:  # as expert_ffn_bench: past the GPU's burst clocks
        f()
        torch.cuda.synchronize()
        if time.perf_counter() - start >= WARM_UP_SECONDS:
            break
    times = []
    for _ in range(iters):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        f()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def hf_block(name, hidden, inter, experts, top_k):
    """The transformers MoE block for the shape, bf16 on the GPU, random weights."""
    if name == "mixtral":
        from transformers import MixtralConfig
        from transformers.models.mixtral import modeling_mixtral as m
        cfg = MixtralConfig(hidden_size=hidden, intermediate_size=inter, num_local_experts=experts,
                            num_experts_per_tok=top_k)
        cls = m.MixtralSparseMoeBlock
    else:
        from transformers import DeepseekV3Config
        from transformers.models.deepseek_v3 import modeling_deepseek_v3 as m
        cfg = DeepseekV3Config(hidden_size=hidden, moe_intermediate_size=inter, n_routed_experts=experts,
                               num_experts_per_tok=top_k, n_shared_experts=1, n_group=8, topk_group=4)
        cls = m.DeepseekV3MoE
    with torch.device("cuda"):
        block = cls(cfg).to(torch.bfloat16)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.02)
    return block, cfg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moemesh", help="expert_ffn_bench output to print beside")
    args = ap.parse_args()
    ours = {}
    if args.moemesh:
        for line in open(args.moemesh):
            f = line.split()
            if len(f) >= 3 and f[1].isdigit():
                ours[(f[0], int(f[1]))] = float(f[2])
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    have_grouped = hasattr(torch, "_grouped_mm")
    print(f"{'shape':<12} {'tokens':>6} {'moemesh_ms':>10} {'grouped_mm':>10} {'matmul_loop':>11} "
          f"{'hf_experts':>10} {'speedup':>8}")
    torch.manual_seed(0)
    for name, hidden, inter, experts, top_k in SHAPES:
        w1 = torch.randn(experts, 2 * inter, hidden, device="cuda", dtype=torch.bfloat16) * 0.02
        w2 = torch.randn(experts, hidden, inter, device="cuda", dtype=torch.bfloat16) * 0.02
        w1t, w2t = w1.transpose(1, 2), w2.transpose(1, 2)
        block = hf = None
        try:
            block, _ = hf_block(name, hidden, inter, experts, top_k)
            hf = block.experts
        except Exception as e:  # noqa: BLE001 - report and go on without it
            print(f"# hf_experts unavailable for {name}: {e}", file=sys.stderr)
        for tokens in TOKENS:
            rows = tokens * top_k
            counts = [rows // experts + (1 if e < rows % experts else 0) for e in range(experts)]
            xs = torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16)  # gathered, by expert
            rw = torch.rand(rows, 1, device="cuda", dtype=torch.bfloat16)
            offs = torch.tensor(counts, device="cuda", dtype=torch.int32).cumsum(0, dtype=torch.int32)
            iters = 15 if tokens >= 4096 else 30
            res = {}

            def grouped():
                gu = torch._grouped_mm(xs, w1t, offs=offs)
                a = F.silu(gu[:, :inter]) * gu[:, inter:]
                return torch._grouped_mm(a, w2t, offs=offs) * rw

            def loop():
                out = torch.empty(rows, hidden, device="cuda", dtype=torch.bfloat16)
                start = 0
                for e, n in enumerate(counts):
                    if n:
                        gu = xs[start:start + n] @ w1[e].T
                        a = F.silu(gu[:, :inter]) * gu[:, inter:]
                        out[start:start + n] = (a @ w2[e].T) * rw[start:start + n]
                    start += n
                return out

            with torch.no_grad():
                if have_grouped:
                    try:
                        res["grouped"] = time_gpu(grouped, iters)
                    except Exception as e:  # noqa: BLE001
                        print(f"# grouped_mm failed at {name} {tokens}: {e}", file=sys.stderr)
                res["loop"] = time_gpu(loop, iters)
                if hf is not None:
                    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
                    idx = (torch.arange(rows, device="cuda") % experts).view(tokens, top_k)
                    wts = torch.rand(tokens, top_k, device="cuda", dtype=torch.bfloat16)
                    try:
                        res["hf"] = time_gpu(lambda: hf(x, idx, wts), iters)
                    except Exception as e:  # noqa: BLE001
                        print(f"# hf_experts failed at {name} {tokens}: {e}", file=sys.stderr)
            best = min(res.values())
            mine = ours.get((name, tokens))
            fmt = lambda k: f"{res[k]:.3f}" if k in res else "-"  # noqa: E731
            ratio = f"{best / mine:.2f}x" if mine else "-"
            mine = f"{mine:.3f}" if mine else "-"
            print(f"{name:<12} {tokens:>6} {mine:>10} {fmt('grouped'):>10} {fmt('loop'):>11} "
                  f"{fmt('hf'):>10} {ratio:>8}", flush=True)
        del w1, w2, w1t, w2t, hf, block
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
