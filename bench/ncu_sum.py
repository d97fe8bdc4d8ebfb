#!/usr/bin/env python3
"""ncu_sum.py CSV [--steps N] [--top K]: the time of each kernel per
training step, from Nsight Compute's per-launch CSV

    ncu --graph-profiling node --cache-control none --clock-control none \\
        --metrics gpu__time_duration.sum --csv ./train --bench --steps N

(bench/gpu.sh with BENCH_PROFILE=1). Launches of the same kernel (its
name without the argument list, templates kept) are added up and divided
by N; prints the total, then the K kernels that take longest."""
import argparse
import collections
import csv
import sys

UNIT_MS = {"ns": 1e-6, "nsecond": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0, "msecond": 1.0, "s": 1e3,
           "second": 1e3}


def kernel_name(full):
    name = full.strip()
    if name.startswith("void "):
        name = name[5:]
    # the argument list starts at the first "(" outside the template
    # arguments, which may hold parentheses of their own: <(int)-1, 4>
    depth = 0
    for i, c in enumerate(name):
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "(" and depth == 0:
            return name[:i].strip()
    return name


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv")
    ap.add_argument("--steps", type=float, default=1.0)
    ap.add_argument("--top", type=int, default=40)
    a = ap.parse_args()
    # ncu prints its own lines (==PROF==, the trainer's output) before the table
    with open(a.csv, newline="") as f:
        rows = [line for line in f if line.startswith('"')]
    total = collections.defaultdict(float)
    launches = collections.Counter()
    for row in csv.DictReader(rows):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = row.get("Metric Unit", "")
        if unit not in UNIT_MS:
            sys.exit("ncu_sum.py: %s: unknown time unit %r" % (a.csv, unit))
        name = kernel_name(row["Kernel Name"])
        total[name] += float(row["Metric Value"].replace(",", "")) * UNIT_MS[unit]
        launches[name] += 1
    if not total:
        sys.exit("ncu_sum.py: %s: no gpu__time_duration.sum rows" % a.csv)
    print("total %.3f ms per step, %.1f launches per step (%g profiled steps)"
          % (sum(total.values()) / a.steps, sum(launches.values()) / a.steps, a.steps))
    for name, ms in sorted(total.items(), key=lambda kv: -kv[1])[:a.top]:
        print("%8.3f ms %7.1f launches  %s" % (ms / a.steps, launches[name] / a.steps, name[:150]))


if __name__ == "__main__":
    main()
