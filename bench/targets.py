#!/usr/bin/env python3
"""targets.py: one config's figures of `make bench` against the CUDA
backend issue's targets, each said met or not.

Usage: targets.py CFG MOECC_TXT [--recompute-all TXT] [--torch JSON]

MOECC_TXT holds the line `./train --bench` printed in the default
precision ("moecc CFG: batch B, X ms per step, Y images/s, Z GFLOP/s
..., device memory M MiB"), --recompute-all the same line of the trainer
built with `recompute = all`, and --torch the JSON list that
bench/torch_gpu.py --json wrote in the same run (its best variant is the
one with the most images/s; its peak memory and the measured bf16 GEMM
peak come from there). The targets (the issue's): at least 5x the best
PyTorch anchor measured on an H100 (47,000 images/s for gpu_p, 21,000 for
gpu_s), at least 5x the best PyTorch variant of the same run (the same
GPU: the speed-up), at least 40% of the measured bf16 peak for gpu_s,
and peak memory at most half of PyTorch's in the same run (by default or with
recompute = all, said which). A figure that is missing is said so, not
guessed. Exit status 0 whatever is met; 2 on unreadable input.
"""
import argparse
import json
import re
import sys

TARGETS = {
    "gpu_p": {"images_per_s": 47000.0},
    "gpu_s": {"images_per_s": 21000.0, "peak_share": 0.40},
}
SPEEDUP = 5.0
MEMORY_SHARE = 0.5


def moecc_line(path):
    """images/s, TFLOP/s and MiB of the first `moecc CFG:` line in path"""
    try:
        text = open(path).read()
    except OSError as e:
        print("targets.py: %s: %s" % (path, e.strerror), file=sys.stderr)
        sys.exit(2)
    m = re.search(r"moecc \S+: batch \d+, [\d.]+ ms per step, ([\d.]+) images/s, ([\d.]+) GFLOP/s.*?"
                  r"device memory (\d+) MiB", text)
    if not m:
        print("targets.py: %s: no `moecc CFG: batch ...` line with images/s, GFLOP/s and device memory" % path,
              file=sys.stderr)
        sys.exit(2)
    return float(m.group(1)), float(m.group(2)) / 1000.0, float(m.group(3))


def best_torch(path):
    """the variant of bench/torch_gpu.py's JSON with the most images/s"""
    try:
        rows = json.load(open(path))
    except (OSError, ValueError) as e:
        print("targets.py: %s: %s" % (path, e), file=sys.stderr)
        sys.exit(2)
    ok = [r for r in rows if r.get("status") == "ok" and r.get("images_per_s")]
    return max(ok, key=lambda r: r["images_per_s"]) if ok else None


def verdict(met):
    return "met" if met else "not met"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cfg")
    ap.add_argument("moecc_txt")
    ap.add_argument("--recompute-all", metavar="TXT")
    ap.add_argument("--torch", metavar="JSON")
    o = ap.parse_args()
    tag = "[targets %s]" % o.cfg
    ips, tflops, mib = moecc_line(o.moecc_txt)
    best = best_torch(o.torch) if o.torch else None
    want = TARGETS.get(o.cfg, {})
    vs = (" (%.2fx the best PyTorch, %s at %.1f images/s)" % (ips / best["images_per_s"], best["variant"],
                                                           best["images_per_s"]) if best else "")
    if "images_per_s" in want:
        print("%s throughput: %.1f images/s against at least %.0f: %s%s"
              % (tag, ips, want["images_per_s"], verdict(ips >= want["images_per_s"]), vs))
    else:
        print("%s throughput: %.1f images/s (no target for this config)%s" % (tag, ips, vs))
    if best:
        ratio = ips / best["images_per_s"]
        print("%s speed-up: %.2fx the best PyTorch of this run (%s at %.1f images/s) against at least %.0fx "
              "(%.0f images/s): %s" % (tag, ratio, best["variant"], best["images_per_s"], SPEEDUP,
                                       SPEEDUP * best["images_per_s"], verdict(ratio >= SPEEDUP)))
    else:
        print("%s speed-up: not judged (no PyTorch in this run)" % tag)
    if "peak_share" in want:
        peak = best.get("gemm_peak_tflops") if best else None
        if peak:
            share = tflops / peak
            print("%s share of the bf16 peak: %.1f of %.0f TFLOP/s = %.1f%% against at least %.0f%%: %s"
                  % (tag, tflops, peak, 100 * share, 100 * want["peak_share"], verdict(share >= want["peak_share"])))
        else:
            print("%s share of the bf16 peak: %.1f TFLOP/s; not judged (no measured peak in this run)" % (tag, tflops))
    if not best or not best.get("peak_mib"):
        print("%s memory: %.0f MiB; not judged (no PyTorch peak in this run)" % (tag, mib))
        return 0
    ref = best["peak_mib"]
    line = "%s memory: %.0f MiB = %.3fx the best PyTorch's %.0f MiB" % (tag, mib, mib / ref, ref)
    met = mib <= MEMORY_SHARE * ref
    how = "by default"
    if o.recompute_all:
        rc_ips, _, rc_mib = moecc_line(o.recompute_all)
        line += "; with recompute = all %.0f MiB = %.3fx at %.1f images/s" % (rc_mib, rc_mib / ref, rc_ips)
        if not met and rc_mib <= MEMORY_SHARE * ref:
            met, how = True, "with recompute = all"
    print("%s, against at most %.1fx: %s" % (line, MEMORY_SHARE, verdict(met) + (" " + how if met else "")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
