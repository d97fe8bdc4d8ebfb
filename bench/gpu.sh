#!/bin/sh
# bench/gpu.sh: `make bench`, on a machine with an NVIDIA GPU. Configs P
# and S of the CUDA backend (bench/gpu_p.moe, bench/gpu_s.moe) with the
# generated CUDA trainer, then the PyTorch versions of the same models on
# the same GPU (bench/torch_gpu.py: eager fp32 and bf16, torch.compile,
# torch._grouped_mm). For each: ms per step, images/s, model TFLOP/s
# (3 x the forward FLOPs of the routed experts), peak device memory.
#
# The trainer's figures: compute (--bench: one random batch sent every
# step, the mean of STEPS steps after 2 warm-up steps) in bf16, tf32 and fp32,
# then in bf16 with recompute = experts and = all (a trainer each),
# and with the data loader on files in CIFAR-10's binary format (random
# pixels, written here: the machine has no network), the images/s of the
# last metrics record of a 200-step run. Then bench/targets.py says each
# of the CUDA backend issue's targets met or not (lines "[targets CFG]
# ..."): images/s, the share of the measured bf16 peak, and memory against
# the best PyTorch's peak in this run, by default or with recompute = all.
# With two GPUs or more, the same on 2, 4 and 8 GPUs, data and expert
# parallel, weak and strong scaling, and the fp32 loss of several GPUs
# against one (below, "Several GPUs").
# Appends everything to $BENCH_OUT (default bench-gpu.txt); BENCH_TORCH=0
# leaves PyTorch out, BENCH_DP=0 the multi-GPU runs, BENCH_GPUS="2 4 8"
# says which GPU counts, BENCH_CONFIGS="gpu_p gpu_s" which configs;
# BENCH_QUICK=1 runs only what the multi-GPU figures need (the 1-GPU
# trainer in bf16, no fp32, no loader, no PyTorch). BENCH_EP_ENV="A=1 B=2;C=3"
# runs the expert-parallel weak-scaling trainer again under each set of
# settings (default: MOECC_EP_OVERLAP=0). BENCH_PROFILE=1 adds,
# for each config, Nsight Compute's time of every kernel in two bf16 steps,
# summed per kernel and step by bench/ncu_sum.py (lines "[CFG ncu] ...").
set -u
: "${top_srcdir:=.}" "${top_builddir:=.}" "${MOECC:=$top_builddir/moecc}"
# the script changes directory: every path it is given becomes absolute
top_srcdir=$(cd "$top_srcdir" && pwd) && top_builddir=$(cd "$top_builddir" && pwd) || exit 1
case $MOECC in /*) ;; */*) MOECC=$(pwd)/$MOECC ;; esac
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

configs=${BENCH_CONFIGS:-gpu_p gpu_s}
# Every trainer is generated and built first, all at once (nvcc spends
# most of its time in one translation unit per trainer, so building them
# side by side is what shortens the run), and before anything is timed.
# build_trainer NAME MOE: $work/NAME from MOE
build_trainer() {
    (cd "$top_srcdir" && "$MOECC" --target cuda "$2" -o "$work/$1" > "$work/$1.moecc.log" 2>&1) &&
        env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -j4 -C "$work/$1" MOERT="$top_builddir" \
            MOERT_SRC="$top_srcdir" BACKEND=cuda > "$work/$1.build.log" 2>&1
}
pids=
for cfg in $configs; do
    build_trainer "$cfg" "bench/$cfg.moe" & pids="$pids $!:$cfg"
    [ "${BENCH_QUICK:-0}" = 1 ] && continue
    # bf16 again with recompute = experts and = all: the memory each
    # saves, the time each costs
    for rc in experts all; do
        sed "s/^\\(    precision = bf16\\)\$/\\1\\n    recompute = $rc/" "$top_srcdir/bench/$cfg.moe" > "$work/${cfg}_$rc.moe"
        build_trainer "${cfg}_$rc" "$work/${cfg}_$rc.moe" & pids="$pids $!:${cfg}_$rc"
    done
done
for p in $pids; do
    wait "${p%%:*}" || { cat "$work/${p#*:}.moecc.log" "$work/${p#*:}.build.log"; exit 1; }
done
for cfg in $configs; do
    cd "$work/$cfg" || exit 1
    precs="bf16 tf32 fp32"
    [ "${BENCH_QUICK:-0}" = 1 ] && precs=bf16
    for prec in $precs; do
        ./train --bench --steps $((STEPS + 2)) --precision $prec | grep '^moecc' | sed "s/^/[$prec] /" |
            tee "$work/$cfg.$prec.txt" | tee -a "$out"
    done
    for rc in experts all; do
        [ "${BENCH_QUICK:-0}" = 1 ] && break
        (cd "$work/${cfg}_$rc" && ./train --bench --steps $((STEPS + 2)) --precision bf16) | grep '^moecc' |
            sed "s/^/[bf16, recompute = $rc] /" | tee "$work/${cfg}_$rc.txt" | tee -a "$out"
    done
    if [ "${BENCH_PROFILE:-0}" = 1 ]; then
        if command -v ncu > /dev/null 2>&1; then
            ncu --graph-profiling node --cache-control none --clock-control none --metrics gpu__time_duration.sum \
                --csv ./train --bench --steps 2 --precision bf16 > "$work/$cfg.ncu.csv" 2> "$work/$cfg.ncu.err" &&
                "$PY" "$top_srcdir/bench/ncu_sum.py" "$work/$cfg.ncu.csv" --steps 2 | sed "s/^/[$cfg ncu] /" |
                tee -a "$out" || { cat "$work/$cfg.ncu.err"; exit 1; }
        else
            echo "# $cfg: no profile (ncu is not on PATH)" | tee -a "$out"
        fi
    fi
    if [ "${BENCH_QUICK:-0}" = 1 ]; then
        cd "$work" || exit 1
        continue
    fi
    ./train --data "$work/data" --steps 200 --log-every 100 --eval-every 0 --max-eval 1 -q \
        --metrics real.jsonl --checkpoint real.safetensors > real.log 2>&1 || { cat real.log; exit 1; }
    ips=$("$PY" -c 'import json,sys; print("%.0f" % [r for r in map(json.loads, open(sys.argv[1])) if r["kind"] == "train"][-1]["images_per_s"])' real.jsonl)
    echo "moecc $cfg with the data loader (CIFAR-10 format files, bf16): $ips images/s" | tee -a "$out"
    if [ "${BENCH_TORCH:-1}" != 0 ]; then
        # unbuffered, line by line: each variant's line is in $out as
        # soon as it is measured
        "$PY" -u "$top_srcdir/bench/torch_gpu.py" "$work/$cfg" --steps "$STEPS" --json "$work/$cfg.torch.json" 2>&1 |
            grep --line-buffered -E '^(gpu|pytorch)' | tee -a "$out"
    fi
    # the issue's targets, each said met or not (bench/targets.py: the
    # memory against PyTorch's peak in this run, by default or with
    # recompute = all)
    (
        set -- "$cfg" "$work/$cfg.bf16.txt"
        [ -s "$work/${cfg}_all.txt" ] && set -- "$@" --recompute-all "$work/${cfg}_all.txt"
        [ -s "$work/$cfg.torch.json" ] && set -- "$@" --torch "$work/$cfg.torch.json"
        "$PY" "$top_srcdir/bench/targets.py" "$@"
    ) | tee -a "$out"
    cd "$work" || exit 1
done

# Several GPUs: 2, 4 and 8 of them (those the machine has; BENCH_GPUS="2 4"
# picks), data parallel (parallel(data = n)) and, where the experts split
# evenly over n, expert parallel (parallel(data = n, expert = n): E/n
# experts per GPU, one each for S's 8 experts on 8 GPUs); weak scaling (each
# GPU keeps the 1-GPU batch) and strong scaling (the 1-GPU batch split over
# the n GPUs), in bf16. Each gives its efficiency against n times the 1-GPU
# images/s of this run, and an expert-parallel run the share of its step
# that the expert exchange adds (its step time against the data-parallel
# one of the same batches). Then fp32 over 50 steps on the CIFAR-10-format
# files: the loss of n GPUs against 1 GPU's with the same global batch, with
# routing made dropless (capacity is per GPU, so with drops other tokens can
# be dropped on n GPUs than on one: documented, not a mismatch).
# BENCH_CONFIGS="gpu_s" runs one config (8 GPUs: one call each fits the
# device tool's 10 minutes with BENCH_QUICK=1).
gpus=$(nvidia-smi -L | grep -c '^GPU')
counts=
for n in ${BENCH_GPUS:-2 4 8}; do
    [ "$n" -ge 2 ] && [ "$n" -le "$gpus" ] && counts="$counts $n"
done
if [ -z "$counts" ] || [ "${BENCH_DP:-1}" = 0 ]; then
    echo "# several GPUs: not run ($gpus GPU(s), BENCH_GPUS=${BENCH_GPUS:-2 4 8}, BENCH_DP=${BENCH_DP:-1})" |
        tee -a "$out"
    exit 0
fi
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
. "$top_srcdir/scripts/ranks.sh"
RANKS_PORT=$((29600 + $$ % 1000))
ips_of() { sed -n 's/.*, \([0-9.]*\) images\/s.*/\1/p' "$1"; }

# variant NAME CFG GLOBAL-BATCH PARALLEL [dropless]: bench/CFG.moe with that
# batch and parallel statement, compiled into $work/NAME and built in the
# background (every variant is built at once; `wait` for them)
variant() {
    {
        sed -e "s/^\( *batch = \)[0-9]*/\1$3/" \
            -e "$([ "${5:-}" = dropless ] && echo 's/capacity = [0-9.]*/dropless = true/')" \
            "$top_srcdir/bench/$2.moe"
        echo "$4"
    } > "$work/$1.moe"
    "$MOECC" --target cuda "$work/$1.moe" -o "$work/$1" > "$work/$1.moecc.log" 2>&1 || {
        cat "$work/$1.moecc.log"
        exit 1
    }
    (env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -j2 -C "$work/$1" MOERT="$top_builddir" \
        MOERT_SRC="$top_srcdir" BACKEND=cuda > "$work/$1.build.log" 2>&1 || touch "$work/$1.failed") &
}
built() {
    [ ! -e "$work/$1.failed" ] && return 0
    cat "$work/$1.build.log"
    return 1
}
experts_of() { sed -n 's/.*experts = \([0-9]*\).*/\1/p' "$top_srcdir/bench/$1.moe" | head -n 1; }
batch_of() { sed -n 's/^ *batch = \([0-9]*\).*/\1/p' "$top_srcdir/bench/$1.moe"; }

for cfg in $configs; do
    batch=$(batch_of $cfg)
    variant "$cfg.n1.check" $cfg "$batch" "" dropless
    for n in $counts; do
        variant "$cfg.n$n.weak" $cfg $((n * batch)) "parallel(data = $n)"
        variant "$cfg.n$n.strong" $cfg "$batch" "parallel(data = $n)"
        variant "$cfg.n$n.check" $cfg "$batch" "parallel(data = $n)" dropless
        if [ $(($(experts_of $cfg) % n)) -eq 0 ]; then
            variant "$cfg.n$n.expert-weak" $cfg $((n * batch)) "parallel(data = $n, expert = $n)"
            variant "$cfg.n$n.expert-strong" $cfg "$batch" "parallel(data = $n, expert = $n)"
            variant "$cfg.n$n.expert-check" $cfg "$batch" "parallel(data = $n, expert = $n)" dropless
        fi
    done
done
wait

# check_loss NAME N: loss = the loss of step 50 of $work/NAME on N GPUs
# (N = 1 too), fp32 (not called in $(...), so that each run takes a port of
# its own from ranks.sh)
check_loss() {
    ranks "$work/$1" "$2" --data "$work/data" --steps 50 --precision fp32 --log-every 50 --eval-every 0 \
        --max-eval 1 -q --metrics check.jsonl --checkpoint check.safetensors > "$work/$1.run.log" || {
        cat "$work/$1.run.log" >&2
        return 1
    }
    loss=$("$PY" -c 'import json,sys; print([r for r in map(json.loads, open(sys.argv[1])) if r["kind"] == "train"][-1]["loss"])' \
        "$work/$1/check.jsonl")
}

for cfg in $configs; do
    one=$(ips_of "$work/$cfg.bf16.txt")
    experts=$(experts_of $cfg)
    # the 1-GPU reference, started as one rank (the 1-GPU trainer takes it)
    ref=
    built "$cfg.n1.check" && check_loss "$cfg.n1.check" 1 && ref=$loss
    for n in $counts; do
        for scaling in weak strong expert-weak expert-strong; do
            name=$cfg.n$n.$scaling
            global=$(batch_of $cfg)
            case $scaling in *weak) global=$((n * global)) ;; esac
            par="parallel(data = $n)"
            case $scaling in expert-*)
                if [ $((experts % n)) -ne 0 ]; then
                    [ $scaling = expert-weak ] &&
                        echo "[$n GPUs, expert parallel] $cfg: not run, its $experts experts do not split over $n GPUs" |
                        tee -a "$out"
                    continue
                fi
                par="parallel(data = $n, expert = $n)" ;;
            esac
            built "$name" || exit 1
            ranks "$work/$name" "$n" --bench --steps $((STEPS + 2)) || exit 1
            line=$(grep '^moecc' "$work/$name/rank0.log") || exit 1
            ips=$(echo "$line" | sed -n 's/.*, \([0-9.]*\) images\/s.*/\1/p')
            echo "$ips" > "$work/$name.ips"
            # images/s of n GPUs over n times one GPU's (weak: the same work
            # per GPU; strong: the speedup over n)
            eff=$(awk -v a="$ips" -v b="$one" -v n="$n" 'BEGIN { printf "%.1f", 100 * a / (n * b) }')
            extra=
            case $scaling in expert-*)
                # the step times of the same batches: global / images/s
                dp=$(cat "$work/$cfg.n$n.${scaling#expert-}.ips")
                # the trainer's count of the bytes each GPU sends in a step's
                # exchanges, over the time they add: the achieved bandwidth
                mb=$(echo "$line" | sed -n 's/.*expert exchange \([0-9.]*\) MB sent.*/\1/p')
                extra=$(awk -v e="$ips" -v d="$dp" -v g="$global" -v mb="${mb:-0}" 'BEGIN {
                    te = 1000 * g / e; td = 1000 * g / d
                    printf "; %.2f ms per step against %.2f data parallel: the exchange adds %.2f ms, %.1f%% of the step", te, td, te - td, 100 * (te - td) / te
                    if (mb > 0 && te > td) printf ", %.0f GB/s sent per GPU over that time", mb / (te - td) }') ;;
            esac
            echo "[$n GPUs, $par, ${scaling#expert-} scaling, global batch $global] $line; $eff% of $n x the 1-GPU $one images/s$extra" |
                tee -a "$out"
            if [ $scaling = expert-weak ]; then
                # the same trainer under other settings of the exchange
                # (BENCH_EP_ENV: sets of VAR=VALUE separated by ";"; by
                # default MOECC_EP_OVERLAP=0, the exchange in one piece per
                # layer on the compute stream: what the overlap gives)
                old_ifs=$IFS
                IFS=';'
                set -f
                for setting in ${BENCH_EP_ENV-MOECC_EP_OVERLAP=0}; do
                    IFS=$old_ifs
                    # shellcheck disable=SC2086
                    [ -n "$(echo $setting)" ] || continue
                    for kv in $setting; do export "${kv?}"; done
                    ranks "$work/$name" "$n" --bench --steps $((STEPS + 2)) || exit 1
                    for kv in $setting; do unset "${kv%%=*}"; done
                    line=$(grep '^moecc' "$work/$name/rank0.log") || exit 1
                    sips=$(echo "$line" | sed -n 's/.*, \([0-9.]*\) images\/s.*/\1/p')
                    echo "[$n GPUs, $par, weak scaling, $(echo $setting)] $line; $(awk -v a="$sips" -v b="$one" -v n="$n" \
                        -v o="$ips" -v g="$global" 'BEGIN { printf "%.1f%% of %d x the 1-GPU images/s; %.2f ms per step against %.2f without it", 100 * a / (n * b), n, 1000 * g / a, 1000 * g / o }')" |
                        tee -a "$out"
                done
                set +f
                IFS=$old_ifs
            fi
        done
        for kind in check expert-check; do
            name=$cfg.n$n.$kind
            [ -d "$work/$name" ] || continue
            par="parallel(data = $n)"
            [ $kind = expert-check ] && par="parallel(data = $n, expert = $n)"
            if [ -z "$ref" ]; then
                echo "[$n GPUs, $par, fp32, dropless] $cfg: no 1-GPU loss to compare with" | tee -a "$out"
            elif built "$name" && check_loss "$name" "$n"; then
                echo "[$n GPUs, $par, fp32, dropless] $cfg: loss after 50 steps $loss, 1 GPU $ref, relative difference $(awk -v a="$loss" -v b="$ref" 'BEGIN { d = (a - b) / b; if (d < 0) d = -d; printf "%.2e", d }')" |
                    tee -a "$out"
            else
                echo "[$n GPUs, $par, fp32, dropless] $cfg: the run failed" | tee -a "$out"
            fi
        done
    done
done
