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
# With two GPUs or more, 2 GPUs (bf16 compute), data parallel
# (parallel(data = 2)) and expert parallel (parallel(data = 2, expert = 2),
# where the experts split over 2): weak scaling (each GPU keeps the 1-GPU
# batch, the global batch doubles) and strong scaling (the same global
# batch, halved per GPU), with the efficiency against the 1-GPU figure of
# the same run.
# Appends everything to $BENCH_OUT (default bench-gpu.txt); BENCH_TORCH=0
# leaves PyTorch out, BENCH_DP=0 the 2-GPU runs; BENCH_QUICK=1 runs only
# what the 2-GPU figures need (the 1-GPU trainer in bf16, no fp32, no
# loader, no PyTorch).
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
    echo "# make bench, $(date -u '+%Y-%m-%d %H:%M UTC'): $(nvidia-smi -L | grep -c '^GPU') x $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n 1)"
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
    env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -j4 -C "$work/$cfg" MOERT="$top_builddir" MOERT_SRC="$top_srcdir" \
        BACKEND=cuda > "$work/$cfg.build.log" 2>&1 || { cat "$work/$cfg.build.log"; exit 1; }
    cd "$work/$cfg" || exit 1
    precs="bf16 fp32"
    [ "${BENCH_QUICK:-0}" = 1 ] && precs=bf16
    for prec in $precs; do
        ./train --bench --steps $((STEPS + 2)) --precision $prec | grep '^moecc' | sed "s/^/[$prec] /" |
            tee "$work/$cfg.$prec.txt" | tee -a "$out"
    done
    if [ "${BENCH_QUICK:-0}" = 1 ]; then
        cd "$work" || exit 1
        continue
    fi
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

# data parallelism on 2 GPUs
gpus=$(nvidia-smi -L | grep -c '^GPU')
if [ "$gpus" -lt 2 ] || [ "${BENCH_DP:-1}" = 0 ]; then
    echo "# data parallelism: not run ($gpus GPU(s), BENCH_DP=${BENCH_DP:-1})" | tee -a "$out"
    exit 0
fi
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
port=$((29600 + $$ % 1000))
ips_of() { sed -n 's/.*, \([0-9.]*\) images\/s.*/\1/p' "$1"; }
for cfg in gpu_p gpu_s; do
    batch=$(sed -n 's/^ *batch = \([0-9]*\).*/\1/p' "$top_srcdir/bench/$cfg.moe")
    one=$(ips_of "$work/$cfg.bf16.txt")
    experts=$(sed -n 's/.*experts = \([0-9]*\).*/\1/p' "$top_srcdir/bench/$cfg.moe" | head -n 1)
    for scaling in weak strong expert-weak expert-strong; do
        global=$batch
        case $scaling in *weak) global=$((2 * batch)) ;; esac
        par="parallel(data = 2)"
        case $scaling in expert-*)
            if [ $((experts % 2)) -ne 0 ]; then
                echo "[2 GPUs, expert parallel] $cfg: not run, its $experts experts do not split over 2 GPUs" | tee -a "$out"
                continue
            fi
            par="parallel(data = 2, expert = 2)" ;;
        esac
        dir=$work/$cfg.dp2.$scaling
        { sed "s/^\( *batch = \)[0-9]*/\1$global/" "$top_srcdir/bench/$cfg.moe"; echo "$par"; } > "$dir.moe"
        "$MOECC" --target cuda "$dir.moe" -o "$dir" > /dev/null || exit 1
        env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -j4 -C "$dir" MOERT="$top_builddir" MOERT_SRC="$top_srcdir" \
            BACKEND=cuda > "$dir.build.log" 2>&1 || { cat "$dir.build.log"; exit 1; }
        port=$((port + 1))
        for r in 0 1; do
            (cd "$dir" && RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
                exec ./train --bench --steps $((STEPS + 2)) > "rank$r.log" 2>&1) &
        done
        wait
        line=$(grep '^moecc' "$dir/rank0.log") || { cat "$dir"/rank*.log; exit 1; }
        two=$(echo "$line" | sed -n 's/.*, \([0-9.]*\) images\/s.*/\1/p')
        # images/s of 2 GPUs over twice one GPU's (weak: the same work per
        # GPU; strong: the speedup over 2)
        eff=$(awk -v a="$two" -v b="$one" 'BEGIN { printf "%.1f", 100 * a / (2 * b) }')
        echo "[2 GPUs, $par, ${scaling#expert-} scaling, global batch $global] $line; $eff% of 2 x the 1-GPU $one images/s" |
            tee -a "$out"
    done
done
