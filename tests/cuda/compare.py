#!/usr/bin/env python3
"""compare.py: the CUDA trainer against the CPU trainer of the same model.

    compare.py dumps CPU.safetensors CUDA.safetensors TOL
        Two --dump-step files (the first step's batch, loss and every
        gradient): the same batch, and every gradient and the loss within
        TOL, as |cuda - cpu| / |cpu| over each tensor (2-norms). NaN or Inf
        anywhere fails.
    compare.py curves CPU.metrics.jsonl CUDA.metrics.jsonl TOL [GTOL]
        Two metrics files of the same run: every logged training loss
        within TOL (relative), the same steps logged, and the gradient
        norms logged with them within GTOL (default: TOL or 1e-4, the
        larger).
    compare.py curves-subset A.metrics.jsonl B.metrics.jsonl TOL
        As curves, for the steps A logged (B may have logged more: a
        resumed run against one that was never stopped).
    compare.py evals A.metrics.jsonl B.metrics.jsonl TOL
        The evaluations of two metrics files: the same steps evaluated,
        each test loss within TOL (relative) and each dataset's accuracy
        within 0.5 points (a sample near a tie may flip).
    compare.py weights A.safetensors B.safetensors TOL
        Two checkpoints of the same model: every tensor (weights and
        optimizer state) within TOL as |b - a| / |a| (2-norms), the same
        step.

Prints one line per check and the worst error; exit status 0 when all
pass, 1 when one does not. Needs numpy only (the safetensors format is
read by hand).
"""
import json
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "I32": np.int32, "I64": np.int64}


def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def dumps(cpu_path, cuda_path, tol):
    cpu, cuda = load(cpu_path), load(cuda_path)
    bad = 0
    if set(cpu) != set(cuda):
        print("tensors differ: only CPU %s, only CUDA %s" % (sorted(set(cpu) - set(cuda)), sorted(set(cuda) - set(cpu))))
        return 1
    for k in ("batch.x", "batch.labels", "batch.dataset"):
        if not np.array_equal(cpu[k], cuda[k]):
            print("FAIL %s: the two runs saw different batches" % k)
            bad += 1
    worst, worst_name = 0.0, ""
    for name in sorted(cpu):
        if name.startswith("batch.") or name.startswith("noise."):
            continue
        a, b = cpu[name].astype(np.float64), cuda[name].astype(np.float64)
        if not np.all(np.isfinite(b)):
            print("FAIL %s: CUDA has NaN or Inf" % name)
            bad += 1
            continue
        na = np.linalg.norm(a)
        err = np.linalg.norm(a - b) / na if na > 0 else np.linalg.norm(b)
        if err > worst:
            worst, worst_name = err, name
        if not err <= tol:
            print("FAIL %s %s: relative error %.3g > %.3g" % (name, list(a.shape), err, tol))
            bad += 1
    loss_c, loss_g = float(cpu["loss"][0]), float(cuda["loss"][0])
    print("loss: cpu %.7f cuda %.7f" % (loss_c, loss_g))
    print("gradients: %d tensors, worst relative error %.3g (%s), tolerance %.3g: %s"
          % (len(cpu) - 3, worst, worst_name, tol, "ok" if not bad else "FAILED"))
    return 1 if bad else 0


def evals(a_path, b_path, tol):
    def records(path):
        with open(path) as f:
            return {r["step"]: r for r in map(json.loads, f) if r.get("kind") == "eval"}
    a, b = records(a_path), records(b_path)
    if not a or sorted(a) != sorted(b):
        print("FAIL: evaluated steps differ: %s and %s" % (sorted(a), sorted(b)))
        return 1
    worst, worst_acc, bad = 0.0, 0.0, 0
    for s in sorted(a):
        err = abs(b[s]["loss"] - a[s]["loss"]) / max(abs(a[s]["loss"]), 1e-12)
        acc = max(abs(b[s]["accuracy"][d] - v) for d, v in a[s]["accuracy"].items())
        worst = max(worst, err) if err == err else float("inf")
        worst_acc = max(worst_acc, acc) if acc == acc else float("inf")
        print("step %d: test loss %.6f and %.6f (%.2g), accuracies %s and %s"
              % (s, a[s]["loss"], b[s]["loss"], err, a[s]["accuracy"], b[s]["accuracy"]))
        if not (err <= tol and acc <= 0.005):
            bad += 1
    print("evaluations: %d, worst test-loss difference %.3g (tolerance %.3g), worst accuracy difference %.2f "
          "points: %s" % (len(a), worst, tol, 100 * worst_acc, "ok" if not bad else "FAILED"))
    return 1 if bad else 0


def curves(cpu_path, cuda_path, tol, subset=False, gtol=None):
    def train_losses(path):
        out = {}
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                if r.get("kind") == "train":
                    out[r["step"]] = r["loss"]
                    norms[path][r["step"]] = r.get("grad_norm")
        return out
    norms = {cpu_path: {}, cuda_path: {}}
    a, b = train_losses(cpu_path), train_losses(cuda_path)
    if subset:  # the steps of the second run that the first logged
        b = {s: v for s, v in b.items() if s in a}
    if not a or sorted(a) != sorted(b):
        print("FAIL: logged steps differ: cpu %s cuda %s" % (sorted(a), sorted(b)))
        return 1
    worst = 0.0
    bad = 0
    for s in sorted(a):
        err = abs(b[s] - a[s]) / max(abs(a[s]), 1e-12)
        worst = max(worst, err) if err == err else float("inf")
        print("step %d: cpu %.6f cuda %.6f (%.2g)" % (s, a[s], b[s], err))
        if not err <= tol:
            bad += 1
    gtol, gworst = (max(tol, 1e-4) if gtol is None else gtol), 0.0
    for s in sorted(a):
        ga, gb = norms[cpu_path][s], norms[cuda_path][s]
        if ga is None or gb is None:
            continue
        err = abs(gb - ga) / max(abs(ga), 1e-12)
        gworst = max(gworst, err) if err == err else float("inf")
        if not err <= gtol:
            print("step %d: gradient norm %.6g and %.6g (%.2g)" % (s, ga, gb, err))
            bad += 1
    print("loss curve: %d points, worst relative difference %.3g, tolerance %.3g; gradient norms within %.3g "
          "(tolerance %.3g): %s" % (len(a), worst, tol, gworst, gtol, "ok" if not bad else "FAILED"))
    return 1 if bad else 0


def weights(a_path, b_path, tol):
    a, b = load(a_path), load(b_path)
    if set(a) != set(b):
        print("tensors differ: only in A %s, only in B %s" % (sorted(set(a) - set(b)), sorted(set(b) - set(a))))
        return 1
    with open(a_path, "rb") as fa, open(b_path, "rb") as fb:
        meta = [json.loads(f.read(struct.unpack("<Q", f.read(8))[0])).get("__metadata__", {}) for f in (fa, fb)]
    if meta[0].get("step") != meta[1].get("step"):
        print("FAIL: step %s against step %s" % (meta[0].get("step"), meta[1].get("step")))
        return 1
    worst, worst_name, bad = 0.0, "", 0
    for k in sorted(a):
        if a[k].dtype != np.float32:
            if not np.array_equal(a[k], b[k]):
                print("FAIL %s differs" % k)
                bad += 1
            continue
        x, y = a[k].astype(np.float64), b[k].astype(np.float64)
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            print("FAIL %s: NaN or Inf" % k)
            bad += 1
            continue
        err = np.linalg.norm(y - x) / max(np.linalg.norm(x), 1e-30)
        if err > worst:
            worst, worst_name = err, k
        if not err <= tol:
            print("FAIL %s: relative difference %.3g" % (k, err))
            bad += 1
    print("weights: %d tensors, worst relative difference %.3g (%s), tolerance %.3g: %s"
          % (len(a), worst, worst_name, tol, "ok" if not bad else "FAILED"))
    return 1 if bad else 0


def main():
    modes = {"dumps": dumps, "curves": curves, "weights": weights, "evals": evals,
             "curves-subset": lambda a, b, t: curves(a, b, t, subset=True)}
    if sys.argv[1:2] == ["curves"] and len(sys.argv) == 6:
        return curves(sys.argv[2], sys.argv[3], float(sys.argv[4]), gtol=float(sys.argv[5]))
    if len(sys.argv) != 5 or sys.argv[1] not in modes:
        print(__doc__, file=sys.stderr)
        return 2
    return modes[sys.argv[1]](sys.argv[2], sys.argv[3], float(sys.argv[4]))


if __name__ == "__main__":
    sys.exit(main())
