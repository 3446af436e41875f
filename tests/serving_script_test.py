#!/usr/bin/env python3
"""bench/serving/serving.py end to end on the demo model: two length pairs over a small
concurrency sweep; results.json holds the machine, the commit and every load point with all
requests completed; gnuplot drew both plots with a line per length pair, named by --label;
`serving.py merge` puts two results side by side.

  serving_script_test.py MOEMESH_BIN
"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    moemesh = sys.argv[1]
    out = tempfile.mkdtemp(prefix="serving_test_")
    subprocess.run([sys.executable, os.path.join(ROOT, "bench/serving/serving.py"), "run", "--models",
                    "models/fortune-moe", "--lengths", "16:8,24:4", "--concurrency", "1,2", "--num-prompts", "4",
                    "--warmup", "1", "--up-flags=--expert-shards=1", "--label", "demo, 1 shard", "--moemesh", moemesh,
                    "--out", out],
                   check=True, cwd=ROOT, timeout=600)
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert results["machine"]["cpus"] >= 1, results["machine"]
    assert results["commit"], results
    assert [(r["input_len"], r["output_len"]) for r in results["runs"]] == [(16, 8), (24, 4)], results["runs"]
    for run in results["runs"]:
        assert [p["load"] for p in run["results"]] == ["concurrency 1", "concurrency 2"], run
        for p in run["results"]:
            assert p["completed"] == p["requests"] == 4, p
            assert p["output_tokens"] == 4 * run["output_len"], p
            assert p["output_tokens_per_s"] > 0, p
    for name in ("throughput.svg", "itl.svg"):
        with open(os.path.join(out, name)) as f:
            svg = f.read()
        assert svg.startswith("<?xml") and "<svg" in svg, name
        for title in ("demo, 1 shard 16:8", "demo, 1 shard 24:4"):
            assert title in svg, (name, title)
    # Two results side by side (here the same one twice): every run of both, one plot.
    merged_out = tempfile.mkdtemp(prefix="serving_merge_")
    results_file = os.path.join(out, "results.json")
    subprocess.run([sys.executable, os.path.join(ROOT, "bench/serving/serving.py"), "merge", "--out", merged_out,
                    results_file, results_file], check=True, cwd=ROOT, timeout=60)
    with open(os.path.join(merged_out, "results.json")) as f:
        merged = json.load(f)
    assert merged["runs"] == results["runs"] * 2, merged["runs"]
    assert merged["commit"] == results["commit"] and len(merged["merged_from"]) == 2, merged
    assert os.path.exists(os.path.join(merged_out, "throughput.svg"))
    print("serving_script_test: ok")


if __name__ == "__main__":
    main()
