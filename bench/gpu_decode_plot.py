#!/usr/bin/env python3
"""Plots gpu_decode_bench's figures: decode tokens/s against streams, one plot per shape.

Each input is the text gpu_decode_bench printed (LABEL=FILE: the label names that run's
mesh series, e.g. the --ipc-sync it ran with). Per shape, the series are the one process
(CUDA graphs, and eager), the rows through the host, the mesh over cuda-ipc of each run, and
the memory roofline (streams over the roofline's step time); tokens/s is streams over a step's
time. The first run's one-process series are drawn (the runs repeat them). Writes
OUT/gpu-decode-SHAPE.svg with gnuplot.

Usage: gpu_decode_plot.py --out docs/img LABEL=FILE [LABEL=FILE ...]
       (the figures in docs/PERFORMANCE.md: bench/results/gpu_decode/)
"""
import argparse
import os
import subprocess
import sys
import tempfile

def parse(path):
    """{shape: [row dict, ...]} from one gpu_decode_bench output."""
    rows = {}
    header = None
    with open(path) as f:
        for line in f:
            if line.startswith("shape "):
                header = line
                continue
            fields = line.split()
            if header is None or len(fields) < 13 or not fields[2].isdigit():
                continue
            # shape layers batch graphs eager host-gr v.host ipc x... x... x... ipc/1p roofline ...
            rows.setdefault(fields[0], []).append({
                "layers": int(fields[1]), "streams": int(fields[2]), "graphs": float(fields[3]),
                "eager": float(fields[4]), "via_host": float(fields[6]),
                "ipc": None if fields[7] == "-" else float(fields[7]), "roofline": float(fields[12]),
            })
    if header is None:
        sys.exit("gpu_decode_plot.py: %s holds no gpu_decode_bench table" % path)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for gpu-decode-SHAPE.svg")
    ap.add_argument("runs", nargs="+", help="LABEL=FILE")
    args = ap.parse_args()
    runs = []
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            sys.exit("gpu_decode_plot.py: give runs as LABEL=FILE, not %r" % spec)
        runs.append((label, parse(path)))
    shapes = []
    for _, rows in runs:
        shapes += [s for s in rows if s not in shapes]
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        gp = ['set terminal svg size 800,500 dynamic enhanced', 'set grid', 'set key top left',
              'set logscale x 2', 'set xlabel "streams"', 'set ylabel "decode tokens/s"']
        for shape in shapes:
            series = []
            first = next(rows[shape] for _, rows in runs if shape in rows)

            def write(name, points):
                dat = os.path.join(tmp, "%s-%d.dat" % (shape, len(series)))
                with open(dat, "w") as f:
                    for streams, ms in sorted(points):
                        f.write("%d %f\n" % (streams, 1000.0 * streams / ms))
                series.append((dat, name))

            write("one process, CUDA graphs", [(r["streams"], r["graphs"]) for r in first])
            write("one process, eager", [(r["streams"], r["eager"]) for r in first])
            write("one process, rows through the host", [(r["streams"], r["via_host"]) for r in first])
            for label, rows in runs:
                points = [(r["streams"], r["ipc"]) for r in rows.get(shape, []) if r["ipc"] is not None]
                if points:
                    write("mesh over cuda-ipc (%s)" % label, points)
            write("memory roofline", [(r["streams"], r["roofline"]) for r in first])
            gp += ['set title "%s, %d layers" noenhanced' % (shape, first[0]["layers"]),
                   'set output "%s"' % os.path.join(args.out, "gpu-decode-%s.svg" % shape),
                   "plot " + ", ".join('"%s" using 1:2 with linespoints title "%s" noenhanced' % s for s in series)]
        done = subprocess.run(["gnuplot"], input="\n".join(gp) + "\n", text=True, capture_output=True)
        if done.returncode != 0:
            sys.exit("gpu_decode_plot.py: gnuplot failed: " + done.stderr)
    for shape in shapes:
        print(os.path.join(args.out, "gpu-decode-%s.svg" % shape))


if __name__ == "__main__":
    main()
