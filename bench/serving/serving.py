#!/usr/bin/env python3
"""The serving matrix: `moemesh bench serve` over models x lengths x load, and its plots.

  serving.py run --models models/fortune-moe [--lengths 128:128,512:64] [--concurrency 1,4,16,64]
                 [--num-prompts 64] [--up-flags "--expert-shards=2"] [--label NAME] --out DIR
      For each model: starts `moemesh up --model MODEL UP_FLAGS`, runs `moemesh bench serve`
      for each input:output length pair over the concurrency sweep, stops the mesh, and
      writes DIR/results.json with the machine, the commit and the flags. Then plots. Each run is
      named by its model's folder, or by --label (one model): its line in the plots.
  serving.py merge --out DIR RESULTS.json...
      The runs of several results.json (the first's machine and commit) in DIR/results.json,
      plotted together: one configuration beside another.
  serving.py plot DIR
      Renders DIR/results.json with gnuplot: DIR/throughput.svg (output tokens/s against
      concurrency) and DIR/itl.svg (P99 inter-token latency against output tokens/s), a line
      per model and length pair.

  serving.py long --model MODEL [--prompt-len 32000] [--streams 16] [--up-flags ...] --out DIR
      A long prompt beside running streams: starts `moemesh up`, runs STREAMS streams of
      128-token prompts alone, then again while long prompts of PROMPT_LEN tokens arrive one
      after another, and writes DIR/long.json: the long prompts' time to first token and the
      streams' inter-token latency with and without them.

docs/PERFORMANCE.md, "Serving", keeps the figures this writes.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def machine():
    info = {"system": platform.platform(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True)
        if out.returncode == 0:
            info["gpus"] = [l.strip() for l in out.stdout.splitlines() if l.strip()]
    return info


def commit():
    out = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def start_mesh(moemesh, model, up_flags):
    p = subprocess.Popen([moemesh, "up", "--model=" + model] + up_flags, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    deadline = time.time() + 300
    for line in p.stdout:
        if line.startswith("gateway listening on "):
            return p, line.split()[-1]
        if time.time() > deadline:
            break
    p.terminate()
    sys.exit("serving.py: the mesh for %s did not start" % model)


def bench_serve(args, target, flags, out_file):
    """Runs `moemesh bench serve` against `target` and returns its JSON results."""
    cmd = [args.moemesh, "bench", "serve", "--target", target, "--output", "json", "--result-file", out_file] + flags
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, cwd=ROOT)
    if done.returncode != 0:
        sys.exit("serving.py: %s failed (%d)" % (" ".join(cmd), done.returncode))
    with open(out_file) as f:
        bench = json.load(f)
    os.remove(out_file)
    return bench["results"]


def run(args):
    if args.label and "," in args.models:
        sys.exit("serving.py: --label names one model's runs; give one model")
    os.makedirs(args.out, exist_ok=True)
    results = {"machine": machine(), "commit": commit(), "flags": vars(args), "runs": []}
    for model in args.models.split(","):
        mesh, target = start_mesh(args.moemesh, model, args.up_flags.split())
        try:
            for pair in args.lengths.split(","):
                input_len, output_len = (int(x) for x in pair.split(":"))
                flags = ["--concurrency", args.concurrency, "--num-prompts", str(args.num_prompts), "--warmup",
                         str(args.warmup), "--input-len", str(input_len), "--output-len", str(output_len)]
                points = bench_serve(args, target, flags, os.path.join(args.out, "bench.json"))
                name = args.label or os.path.basename(os.path.normpath(model))
                results["runs"].append({"model": name, "input_len": input_len, "output_len": output_len,
                                        "results": points})
                print("%s %d:%d done" % (model, input_len, output_len), flush=True)
        finally:
            mesh.terminate()
            mesh.wait(timeout=60)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    plot_if_possible(args.out)


def plot_if_possible(out):
    if shutil.which("gnuplot"):
        plot(out)
    else:
        print("no gnuplot here: run `serving.py plot %s` where it is" % out)


def merge(args):
    merged = None
    for path in args.results:
        with open(path) as f:
            results = json.load(f)
        if merged is None:
            merged = dict(results, runs=[], merged_from=[])
        merged["runs"] += results["runs"]
        merged["merged_from"].append({"file": path, "flags": results.get("flags")})
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(merged, f, indent=2)
    plot_if_possible(args.out)


def long_prompt(args):
    os.makedirs(args.out, exist_ok=True)
    def load(concurrency, prompts, input_len, output_len):
        return ["--concurrency", str(concurrency), "--num-prompts", str(prompts), "--warmup", "0", "--input-len",
                str(input_len), "--output-len", str(output_len)]
    streams = load(args.streams, args.streams, 128, args.stream_output_len)
    prompts = load(1, args.prompts, args.prompt_len, 4)
    mesh, target = start_mesh(args.moemesh, args.model, args.up_flags.split())
    try:
        # A warm-up, so that the first figures do not carry the mesh's first steps.
        bench_serve(args, target, load(args.streams, args.streams, 128, 16), os.path.join(args.out, "warm.json"))
        alone = bench_serve(args, target, streams, os.path.join(args.out, "alone.json"))
        # The streams run in the background while the long prompts arrive.
        out_file = os.path.join(args.out, "beside.json")
        cmd = [args.moemesh, "bench", "serve", "--target", target, "--output", "json", "--result-file", out_file]
        background = subprocess.Popen(cmd + streams, stdout=subprocess.DEVNULL, cwd=ROOT)
        time.sleep(args.delay_s)
        long_points = bench_serve(args, target, prompts, os.path.join(args.out, "long.json.part"))
        if background.wait() != 0:
            sys.exit("serving.py: the background streams failed")
        with open(out_file) as f:
            beside = json.load(f)["results"]
        os.remove(out_file)
    finally:
        mesh.terminate()
        mesh.wait(timeout=60)
    result = {"machine": machine(), "commit": commit(), "flags": vars(args), "streams_alone": alone,
              "streams_beside_long_prompts": beside, "long_prompts": long_points}
    with open(os.path.join(args.out, "long.json"), "w") as f:
        json.dump(result, f, indent=2)
    for name, points in (("streams alone", alone), ("streams beside", beside), ("long prompts", long_points)):
        p = points[0]
        print("%-15s TTFT P50 %8.1f ms  P99 %8.1f ms | ITL P50 %6.2f ms  P99 %7.2f ms  max %7.2f ms | %.1f tok/s" %
              (name, p["ttft_ms"]["p50"], p["ttft_ms"]["p99"], p["itl_ms"]["p50"], p["itl_ms"]["p99"],
               p["itl_ms"]["max"], p["output_tokens_per_s"]))


def plot(out):
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    series = []
    for i, r in enumerate(results["runs"]):
        dat = os.path.join(out, "series%d.dat" % i)
        with open(dat, "w") as f:
            f.write("# concurrency output_tokens_per_s p99_itl_ms\n")
            for point in r["results"]:
                concurrency = int(point["load"].split()[-1]) if point["load"].startswith("concurrency") else 0
                f.write("%d %f %f\n" % (concurrency, point["output_tokens_per_s"], point["itl_ms"]["p99"]))
        series.append((dat, "%s %d:%d" % (r["model"], r["input_len"], r["output_len"])))
    title = "moemesh %s on %s" % (results["commit"], results["machine"].get("cpu", results["machine"]["system"]))
    gp = ['set terminal svg size 800,500 dynamic enhanced', 'set grid', 'set key top left', 'set datafile commentschars "#"',
          'set title "%s" noenhanced' % title.replace('"', "'"),
          'set output "%s"' % os.path.join(out, "throughput.svg"), 'set logscale x 2',
          'set xlabel "concurrency (requests in flight)"', 'set ylabel "output tokens/s"',
          "plot " + ", ".join('"%s" using 1:2 with linespoints title "%s" noenhanced' % (d, t) for d, t in series),
          'unset logscale x', 'set output "%s"' % os.path.join(out, "itl.svg"),
          'set xlabel "output tokens/s"', 'set ylabel "P99 inter-token latency (ms)"',
          "plot " + ", ".join('"%s" using 2:3 with linespoints title "%s" noenhanced' % (d, t) for d, t in series)]
    done = subprocess.run(["gnuplot"], input="\n".join(gp) + "\n", text=True, capture_output=True)
    if done.returncode != 0:
        sys.exit("serving.py: gnuplot failed: " + done.stderr)
    for dat, _ in series:
        os.remove(dat)
    print("plots in %s/throughput.svg and %s/itl.svg" % (out, out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--models", required=True, help="model directories, comma separated")
    r.add_argument("--lengths", default="128:128", help="input:output token lengths, comma separated")
    r.add_argument("--concurrency", default="1,4,16,64")
    r.add_argument("--num-prompts", type=int, default=64)
    r.add_argument("--warmup", type=int, default=4)
    r.add_argument("--up-flags", default="", help="flags for `moemesh up`, e.g. \"--expert-device=cuda\"")
    r.add_argument("--label", help="the runs' name in results and plots (default: the model's folder)")
    r.add_argument("--moemesh", default=os.environ.get("MOEMESH_BIN", os.path.join(ROOT, "build/tools/moemesh/moemesh")))
    r.add_argument("--out", required=True)
    p = sub.add_parser("plot")
    p.add_argument("out")
    m = sub.add_parser("merge")
    m.add_argument("--out", required=True)
    m.add_argument("results", nargs="+", help="results.json files")
    l = sub.add_parser("long")
    l.add_argument("--model", required=True)
    l.add_argument("--prompt-len", type=int, default=32000)
    l.add_argument("--prompts", type=int, default=2, help="long prompts, one after another")
    l.add_argument("--streams", type=int, default=16)
    l.add_argument("--stream-output-len", type=int, default=1024)
    l.add_argument("--delay-s", type=float, default=1.0, help="after the streams start, before the first long prompt")
    l.add_argument("--up-flags", default="")
    l.add_argument("--moemesh", default=os.environ.get("MOEMESH_BIN", os.path.join(ROOT, "build/tools/moemesh/moemesh")))
    l.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.command == "run":
        run(args)
    elif args.command == "long":
        long_prompt(args)
    elif args.command == "merge":
        merge(args)
    else:
        plot(args.out)


if __name__ == "__main__":
    main()
