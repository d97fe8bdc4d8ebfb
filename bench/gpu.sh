#!/bin/sh
# bench/gpu.sh: `make bench`, on a machine with an NVIDIA GPU. Configs P
# and S of the CUDA backend (bench/gpu_p.moe, bench/gpu_s.moe) with the
# generated CUDA trainer, then the PyTorch versions of the same models on
# the same GPU (bench/torch_gpu.py: eager fp32 and bf16, torch.compile,
# torch._grouped_mm). For each: ms per step, images/s, model TFLOP/s
# (3 x the forward FLOPs of the routed experts), peak device memory.
#
# The trainer's figures: compute (--bench: one random batch sent every
# step, the mean of STEPS steps after 2 warm-up steps) in bf16 and fp32,
# and with the data loader on files in CIFAR-10's binary format (random
# pixels, written here: the machine has no network), the images/s of the
# last metrics record of a 200-step run.
# Appends everything to $BENCH_OUT (default bench-gpu.txt); BENCH_TORCH=0
# leaves PyTorch out.
set -u
: "${top_srcdir:=.}" "${top_builddir:=.}" "${MOECC:=$top_builddir/moecc}"
PY=${PYTHON_TORCH:-python3}
STEPS=${BENCH_STEPS:-30}
out=${BENCH_OUT:-bench-gpu.txt}
work=$(mktemp -d "${TMPDIR:-/tmp}/moecc-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
if ! nvidia-smi -L > /dev/null 2>&1; then
    echo "bench/gpu.sh: no GPU answers nvidia-smi" >&2
    exit 1
fi
{
    echo "# make bench, $(date -u '+%Y-%m-%d %H:%M UTC'): $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
    echo "# moecc $("$MOECC" --version | cut -d' ' -f2), $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*')"
} | tee -a "$out"

# CIFAR-10's binary format: records of 1 label byte and 3072 pixel bytes
"$PY" - "$work/data/cifar-10-batches-bin" <<'PYEOF'
import os, sys
import numpy as np
d = sys.argv[1]
os.makedirs(d, exist_ok=True)
rng = np.random.default_rng(0)
for name, n in [("data_batch_%d.bin" % k, 10000) for k in range(1, 6)] + [("test_batch.bin", 10000)]:
    rec = rng.integers(0, 256, size=(n, 3073), dtype=np.uint8)
    rec[:, 0] = rng.integers(0, 10, size=n)
    rec.tofile(os.path.join(d, name))
PYEOF

for cfg in gpu_p gpu_s; do
    (cd "$top_srcdir" && "$MOECC" --target cuda "bench/$cfg.moe" -o "$work/$cfg") || exit 1
    env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -C "$work/$cfg" MOERT="$top_builddir" MOERT_SRC="$top_srcdir" \
        BACKEND=cuda > "$work/$cfg.build.log" 2>&1 || { cat "$work/$cfg.build.log"; exit 1; }
    cd "$work/$cfg" || exit 1
    for prec in bf16 fp32; do
        ./train --bench --steps $((STEPS + 2)) --precision $prec | grep '^moecc' | sed "s/^/[$prec] /" | tee -a "$out"
    done
    ./train --data "$work/data" --steps 200 --log-every 100 --eval-every 0 --max-eval 1 -q \
        --metrics real.jsonl --checkpoint real.safetensors > real.log 2>&1 || { cat real.log; exit 1; }
    ips=$("$PY" -c 'import json,sys; print("%.0f" % [r for r in map(json.loads, open(sys.argv[1])) if r["kind"] == "train"][-1]["images_per_s"])' real.jsonl)
    echo "moecc $cfg with the data loader (CIFAR-10 format files, bf16): $ips images/s" | tee -a "$out"
    if [ "${BENCH_TORCH:-1}" != 0 ]; then
        "$PY" "$top_srcdir/bench/torch_gpu.py" "$work/$cfg" --steps "$STEPS" --json "$work/$cfg.torch.json" 2>&1 |
            grep -E '^(gpu|pytorch)' | tee -a "$out"
    fi
    cd "$work" || exit 1
done
