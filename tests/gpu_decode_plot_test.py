#!/usr/bin/env python3
"""bench/gpu_decode_plot.py on the figures in bench/results/gpu_decode: one SVG per shape with
every series (the one process's three, each run's mesh, the roofline), the mesh series only
for the shapes a run measured, and a clear error for a file that holds no table."""
import os
import subprocess
import sys
import tempfile

SCRIPT = "bench/gpu_decode_plot.py"
RUNS = ["events=bench/results/gpu_decode/h100-mps-events.txt",
        "counter=bench/results/gpu_decode/h100-mps-counter.txt"]


def main():
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run([sys.executable, SCRIPT, "--out", out] + RUNS, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert sorted(os.listdir(out)) == ["gpu-decode-mixtral.svg", "gpu-decode-qwen3.svg"], os.listdir(out)
        with open(os.path.join(out, "gpu-decode-qwen3.svg")) as f:
            qwen3 = f.read()
        for title in ["one process, CUDA graphs", "one process, eager", "one process, rows through the host",
                      "mesh over cuda-ipc (events)", "mesh over cuda-ipc (counter)", "memory roofline"]:
            assert "<title>%s</title>" % title in qwen3, title
        with open(os.path.join(out, "gpu-decode-mixtral.svg")) as f:
            mixtral = f.read()
        assert "mesh over cuda-ipc (events)" in mixtral
        assert "mesh over cuda-ipc (counter)" not in mixtral, "the counter run measured no Mixtral"
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as empty:
            empty.write("nothing measured\n")
            empty.flush()
            bad = subprocess.run([sys.executable, SCRIPT, "--out", out, "x=" + empty.name],
                                 capture_output=True, text=True)
            assert bad.returncode != 0 and "holds no gpu_decode_bench table" in bad.stderr, bad.stderr
        bad = subprocess.run([sys.executable, SCRIPT, "--out", out, RUNS[0].split("=")[1]], capture_output=True,
                             text=True)
        assert bad.returncode != 0 and "LABEL=FILE" in bad.stderr, bad.stderr
    print("gpu_decode_plot_test: ok")


if __name__ == "__main__":
    main()
