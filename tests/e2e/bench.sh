#!/bin/sh
# bench.sh: bench/gpu.sh (`make bench`) end to end without a GPU, with
# stand-ins for nvidia-smi, nvcc, make and the trainer, so that its flow
# and its arithmetic are checked where its real runs cannot be: every
# config and GPU count is reached (a bug once stopped it after the first
# config), each efficiency and exchange figure is the one the stand-in's
# known throughputs give, a failed variant is reported, not skipped, and
# each config's recompute variants are compiled with the setting (the
# stand-in trainer counts its model.cu's shared rooms).
#
# The stand-ins (written below): nvidia-smi lists STUB_GPUS GPUs; make -C
# DIR puts the stand-in trainer in DIR (moecc itself is the real one, so
# every variant's .moe is compiled for real); the trainer reads its
# model.h and prints the line `./train --bench` prints, with 1000 images/s
# per GPU times 0.95 for data parallelism, 0.80 for expert parallelism
# (STUB_EP if set; 0.78 with MOECC_EP_OVERLAP=0; each of these says it sends 1000 MB in a
# step's expert exchanges), and writes the metrics the data runs
# leave (loss 2.5 on one GPU, 2.5 * (1 + 1e-6 * GPUs) on several).
. "${top_srcdir:-.}/tests/e2e/common.sh"
PY=${PYTHON_TORCH:-python3} # the python bench/gpu.sh runs (configure finds it)
if ! "$PY" -c 'import numpy' 2> /dev/null; then
    echo "1..0 # SKIP bench/gpu.sh writes its data with numpy, which $PY lacks"
    exit 77
fi

stub=$WORK/bin
mkdir -p "$stub"
cat > "$stub/nvidia-smi" << 'EOF'
#!/bin/sh
case "$*" in
-L) i=0; while [ $i -lt "${STUB_GPUS:-1}" ]; do echo "GPU $i: Stand-in GPU (UUID: GPU-$i)"; i=$((i + 1)); done ;;
*query-gpu*) echo "Stand-in GPU, 0.0" ;;
esac
EOF
cat > "$stub/nvcc" << 'EOF'
#!/bin/sh
echo "Cuda compilation tools, release 13.0, V13.0.0"
EOF
cat > "$stub/make" << EOF
#!/bin/sh
# make ... -C DIR ...: the stand-in trainer into DIR
while [ \$# -gt 0 ]; do
    [ "\$1" = -C ] && { cp "$stub/train" "\$2/train"; exit 0; }
    shift
done
exit 0
EOF
cat > "$stub/train" << 'EOF'
#!/bin/sh
dir=$(cd "$(dirname "$0")" && pwd)
def() { sed -n "s/^#define $1 \([0-9]*\).*/\1/p" "$dir/model.h"; }
name=$(sed -n 's/^#define MODEL_NAME "\(.*\)"/\1/p' "$dir/model.h")
batch=$(def BATCH)
data=$(def PARALLEL_DATA)
expert=$(def PARALLEL_EXPERT)
n=${WORLD_SIZE:-1}
[ "$n" -eq "${data:-1}" ] || { echo "train: compiled for ${data:-1} GPUs, started as $n" >&2; exit 1; }
share=1
[ "$n" -gt 1 ] && share=0.95
[ "${expert:-1}" -gt 1 ] && share=${STUB_EP:-0.80}
[ "${expert:-1}" -gt 1 ] && [ "${MOECC_EP_OVERLAP:-1}" = 0 ] && share=0.78
ips=$(awk -v n="$n" -v s="$share" 'BEGIN { printf "%.1f", 1000 * n * s }')
bench=0 metrics=
while [ $# -gt 0 ]; do
    case $1 in
    --bench) bench=1 ;;
    --metrics) metrics=$2; shift ;;
    esac
    shift
done
[ "${RANK:-0}" = 0 ] || exit 0
if [ $bench = 1 ]; then
    awk -v nm="$name" -v b="$batch" -v i="$ips" 'BEGIN {
        printf "moecc %s: batch %d, %.2f ms per step, %s images/s, 1.00 GFLOP/s (mean of 30 steps after 2), on stand-in", nm, b, 1000 * b / i, i }'
    [ "${expert:-1}" -gt 1 ] && printf ", expert exchange 1000.0 MB sent per step per GPU"
    # recompute: how many buffers moecc gave shared rooms
    shared=$(grep -c ': recompute \*/' "$dir/model.cu" 2> /dev/null)
    [ "${shared:-0}" -gt 0 ] && printf ", %d buffers in shared rooms" "$shared"
    # device memory: 1000 MiB, 400 with shared rooms
    printf ", device memory %d MiB" $([ "${shared:-0}" -gt 0 ] && echo 400 || echo 1000)
    echo
elif [ -n "$metrics" ]; then
    loss=$(awk -v n="$n" 'BEGIN { printf "%.10f", 2.5 * (n > 1 ? 1 + 1e-6 * n : 1) }')
    echo "{\"kind\": \"train\", \"loss\": $loss, \"images_per_s\": $ips}" > "$metrics"
fi
EOF
# ncu ... --csv ./train ...: the per-launch table Nsight Compute prints,
# after lines of its own: two launches each of a templated kernel (100 us)
# and of one without templates (0.5 ms), and a row of another metric
cat > "$stub/ncu" << 'EOF'
#!/bin/sh
echo "==PROF== Connected to process 1"
echo '"ID","Kernel Name","Metric Name","Metric Unit","Metric Value"'
for i in 0 1; do
    echo "\"$((2 * i))\",\"void bias_act_kernel<(int)-1, 4>(float *, const float *, long)\",\"gpu__time_duration.sum\",\"us\",\"100\""
    echo "\"$((2 * i + 1))\",\"adamw_kernel(float *, float *)\",\"gpu__time_duration.sum\",\"ms\",\"0.5\""
    echo "\"$((2 * i + 1))\",\"adamw_kernel(float *, float *)\",\"sm__cycles_elapsed.avg\",\"cycle\",\"1,000\""
done
EOF
chmod +x "$stub"/*

# bench/gpu.sh on 4 stand-in GPUs, both configs
out=$WORK/bench.txt
export top_srcdir top_builddir MOECC
if PATH="$stub:$PATH" STUB_GPUS=4 BENCH_TORCH=0 BENCH_STEPS=30 BENCH_PROFILE=1 BENCH_OUT="$out" \
    sh "$top_srcdir/bench/gpu.sh" > "$WORK/bench.log" 2>&1; then
    ok "bench/gpu.sh runs to the end on 4 stand-in GPUs"
else
    cat "$WORK/bench.log"
    not_ok "bench/gpu.sh runs to the end on 4 stand-in GPUs"
fi

# has TEXT WHAT: the output has the line, else it is printed and the check fails
has() {
    if grep -qF -- "$1" "$out"; then
        ok "$2"
    else
        echo "# wanted a line with: $1"
        sed 's/^/# | /' "$out"
        not_ok "$2"
    fi
}
for cfg in gpu_p gpu_s; do
    has "[bf16] moecc $cfg: batch" "$cfg: one GPU, default precision"
    has "[fp32] moecc $cfg: batch" "$cfg: one GPU, fp32"
    has "[tf32] moecc $cfg: batch" "$cfg: one GPU, tf32"
    # the recompute variants, compiled by moecc with the setting
    for rc in experts all; do
        if grep -F "[bf16, recompute = $rc] moecc $cfg: batch" "$out" | grep -q 'buffers in shared rooms'; then
            ok "$cfg: one GPU, bf16 with recompute = $rc"
        else
            sed 's/^/# | /' "$out"
            not_ok "$cfg: one GPU, bf16 with recompute = $rc (its trainer with shared rooms)"
        fi
    done
    has "moecc $cfg with the data loader (CIFAR-10 format files, bf16): 1000 images/s" "$cfg: the data loader's images/s"
    for n in 2 4; do
        has "[$n GPUs, parallel(data = $n), weak scaling, global batch" "$cfg: $n GPUs, data parallel, weak"
        has "[$n GPUs, parallel(data = $n), strong scaling" "$cfg: $n GPUs, data parallel, strong"
    done
done
# the arithmetic, worked by hand: S (batch 256) on 2 GPUs, weak: 1,900
# images/s data parallel and 1,600 expert parallel at a global batch of 512
# are 269.47 and 320.00 ms a step: the exchange adds 50.53 ms, 15.8%
has "[2 GPUs, parallel(data = 2), weak scaling, global batch 512] moecc gpu_s: batch 512, 269.47 ms per step, 1900.0 images/s" \
    "gpu_s, 2 GPUs, data parallel, weak: the stand-in's figures"
has "95.0% of 2 x the 1-GPU 1000.0 images/s" "data parallel: 95.0% of twice one GPU"
has "80.0% of 2 x the 1-GPU 1000.0 images/s; 320.00 ms per step against 269.47 data parallel: the exchange adds 50.53 ms, 15.8% of the step, 20 GB/s sent per GPU over that time" \
    "gpu_s, 2 GPUs, expert parallel, weak: efficiency, the exchange's share and bandwidth (1000 MB in 50.53 ms)"
# 4 GPUs, strong (the global batch of one GPU): 3,200 against 3,800 images/s,
# 80.00 against 67.37 ms: 12.63 ms, 15.8%
has "80.0% of 4 x the 1-GPU 1000.0 images/s; 80.00 ms per step against 67.37 data parallel: the exchange adds 12.63 ms, 15.8% of the step, 79 GB/s sent per GPU over that time" \
    "gpu_s, 4 GPUs, expert parallel, strong"
has "MOECC_EP_OVERLAP=0] moecc" "the second expert-parallel run is labelled with its setting"
has "78.0% of 2 x the 1-GPU images/s; 328.21 ms per step against 320.00 without it" \
    "MOECC_EP_OVERLAP=0: the step without the overlap against the step with it (1,560 against 1,600 images/s at 512)"
has "[2 GPUs, expert parallel] gpu_p: not run, its 7 experts do not split over 2 GPUs" \
    "gpu_p's 7 experts: expert parallelism said not run"
has "gpu_s: loss after 50 steps 2.500005, 1 GPU 2.5, relative difference 2.00e-06" \
    "the fp32 check: 2 GPUs' loss against one's"
has "gpu_s: loss after 50 steps 2.50001, 1 GPU 2.5, relative difference 4.00e-06" \
    "the fp32 check: 4 GPUs'"
# the targets (bench/targets.py): 1,000 images/s against 21,000; no
# PyTorch in this run (BENCH_TORCH=0), so memory is not judged
has "[targets gpu_s] throughput: 1000.0 images/s against at least 21000: not met" \
    "the targets: gpu_s's throughput said not met"
has "[targets gpu_p] memory: 1000 MiB; not judged (no PyTorch peak in this run)" \
    "the targets: memory not judged without PyTorch's peak"
has "[targets gpu_s] speed-up: not judged (no PyTorch in this run)" \
    "the targets: the speed-up not judged without PyTorch"
# the profile: (2 x 0.1 + 2 x 0.5) ms over 2 steps, the templated name whole
has "[gpu_s ncu] total 0.600 ms per step, 2.0 launches per step (2 profiled steps)" \
    "BENCH_PROFILE=1: the kernels' time per step (ncu_sum.py)"
has "[gpu_p ncu]    0.500 ms     1.0 launches  adamw_kernel" "ncu_sum.py: the longest kernel first, ms converted"
has "[gpu_p ncu]    0.100 ms     1.0 launches  bias_act_kernel<(int)-1, 4>" \
    "ncu_sum.py: a templated kernel named whole, us converted"

# started from the build tree with relative paths, as a script on the GPU
# machine does: every config still reaches its several-GPU runs (the bench
# changes directory; relative paths once stopped it after the first config);
# with BENCH_EP_ENV, the expert-parallel run again under each setting
rel=$(realpath --relative-to="$top_builddir" "$top_srcdir")
if (cd "$top_builddir" && PATH="$stub:$PATH" STUB_GPUS=2 BENCH_TORCH=0 BENCH_QUICK=1 BENCH_OUT="$WORK/rel.txt" \
    BENCH_EP_ENV="STUB_EP=0.70 STUB_TAG=x; ;MOECC_EP_OVERLAP=0" \
    top_srcdir="$rel" top_builddir=. MOECC=./moecc sh "$rel/bench/gpu.sh" > "$WORK/rel.log" 2>&1) &&
    grep -qF "[2 GPUs, parallel(data = 2), strong scaling, global batch 1024] moecc gpu_p" "$WORK/rel.txt" &&
    grep -qF "[2 GPUs, parallel(data = 2, expert = 2), strong scaling, global batch 256] moecc gpu_s" "$WORK/rel.txt"; then
    ok "relative paths: both configs reach their 2-GPU runs"
else
    cat "$WORK/rel.log" "$WORK/rel.txt"
    not_ok "relative paths: both configs reach their 2-GPU runs"
fi
out=$WORK/rel.txt
# 512 images at 1,400 images/s against 1,600
has "[2 GPUs, parallel(data = 2, expert = 2), weak scaling, STUB_EP=0.70 STUB_TAG=x] moecc gpu_s: batch 512" \
    "BENCH_EP_ENV: a run under the first setting, labelled with it"
has "70.0% of 2 x the 1-GPU images/s; 365.71 ms per step against 320.00 without it" \
    "BENCH_EP_ENV: that run's step against the default one's"
# the first setting's STUB_EP no longer set: 0.78, not 0.70
has "[2 GPUs, parallel(data = 2, expert = 2), weak scaling, MOECC_EP_OVERLAP=0] moecc gpu_s: batch 512, 328.21 ms" \
    "BENCH_EP_ENV: the next setting runs without the previous one's variables"
if [ "$(grep -c 'expert = 2), weak scaling, [A-Z]' "$out")" -eq 2 ]; then
    ok "BENCH_EP_ENV: an empty setting is skipped"
else
    grep 'weak scaling' "$out"
    not_ok "BENCH_EP_ENV: an empty setting is skipped (two runs wanted)"
fi

# bench/targets.py on figures of a real run (the twentieth session's S):
# the best PyTorch is the variant with the most images/s, not the one
# with the least memory; 3,216 / 6,496 = 0.495 is at most half, 7,822 is
# 1.204x; 248.0576 of 786 TFLOP/s is 31.6%
cat > "$WORK/t_s.json" << 'EOF'
[{"variant": "eager_fp32", "status": "ok", "images_per_s": 1130.0, "peak_mib": 3000.0, "gemm_peak_tflops": 786.0},
 {"variant": "grouped_bf16", "status": "ok", "images_per_s": 6285.0, "peak_mib": 6496.0, "gemm_peak_tflops": 786.0},
 {"variant": "compile_bf16", "status": "skipped", "reason": "stand-in"}]
EOF
echo "[bf16] moecc gpu_s: batch 256, 14.51 ms per step, 17646.6 images/s, 248057.60 GFLOP/s (mean of 30 steps after 2), on cuda (H200, bf16), device memory 7822 MiB" > "$WORK/t_s.txt"
echo "[bf16, recompute = all] moecc gpu_s: batch 256, 18.40 ms per step, 13912.0 images/s, 195561.13 GFLOP/s (mean of 30 steps after 2), on cuda (H200, bf16), device memory 3216 MiB" > "$WORK/t_s_all.txt"
out=$WORK/targets.txt
"$PY" "$top_srcdir/bench/targets.py" gpu_s "$WORK/t_s.txt" --recompute-all "$WORK/t_s_all.txt" --torch "$WORK/t_s.json" > "$out" 2>&1
has "[targets gpu_s] throughput: 17646.6 images/s against at least 21000: not met (2.81x the best PyTorch, grouped_bf16 at 6285.0 images/s)" \
    "targets.py: throughput against the target and the best PyTorch"
has "[targets gpu_s] speed-up: 2.81x the best PyTorch of this run (grouped_bf16 at 6285.0 images/s) against at least 5x (31425 images/s): not met" \
    "targets.py: the speed-up over the same run's best PyTorch, not met"
has "[targets gpu_s] share of the bf16 peak: 248.1 of 786 TFLOP/s = 31.6% against at least 40%: not met" \
    "targets.py: the share of the measured peak"
has "[targets gpu_s] memory: 7822 MiB = 1.204x the best PyTorch's 6496 MiB; with recompute = all 3216 MiB = 0.495x at 13912.0 images/s, against at most 0.5x: met with recompute = all" \
    "targets.py: memory by default and with recompute = all against the best PyTorch's peak"
# 3,249 MiB is more than half of 6,496: not met
sed 's/3216 MiB/3249 MiB/' "$WORK/t_s_all.txt" > "$WORK/t_s_all2.txt"
"$PY" "$top_srcdir/bench/targets.py" gpu_s "$WORK/t_s.txt" --recompute-all "$WORK/t_s_all2.txt" --torch "$WORK/t_s.json" > "$out" 2>&1
has "= 0.500x at 13912.0 images/s, against at most 0.5x: not met" "targets.py: just over half is not met"
# 31,425 images/s is 5x PyTorch's 6,285: met at exactly 5x
sed 's/17646.6 images/31425.0 images/' "$WORK/t_s.txt" > "$WORK/t_s5.txt"
"$PY" "$top_srcdir/bench/targets.py" gpu_s "$WORK/t_s5.txt" --torch "$WORK/t_s.json" > "$out" 2>&1
has "[targets gpu_s] speed-up: 5.00x the best PyTorch of this run (grouped_bf16 at 6285.0 images/s) against at least 5x (31425 images/s): met" \
    "targets.py: the speed-up met at 5x"
if "$PY" "$top_srcdir/bench/targets.py" gpu_s "$WORK/t_s.json" > "$out" 2>&1; then
    not_ok "targets.py: a file without a moecc line is an error"
else
    has 'no `moecc CFG: batch ...` line' "targets.py: a file without a moecc line is an error, said where"
fi

# a variant that fails to build is reported, and the run stops with an error
cat > "$stub/make" << EOF
#!/bin/sh
while [ \$# -gt 0 ]; do
    if [ "\$1" = -C ]; then
        case \$2 in *expert-weak*) echo "stand-in: this variant does not build" >&2; exit 2 ;; esac
        cp "$stub/train" "\$2/train"
        exit 0
    fi
    shift
done
exit 0
EOF
if PATH="$stub:$PATH" STUB_GPUS=2 BENCH_TORCH=0 BENCH_QUICK=1 BENCH_CONFIGS=gpu_s BENCH_OUT="$WORK/bad.txt" \
    sh "$top_srcdir/bench/gpu.sh" > "$WORK/bad.log" 2>&1; then
    cat "$WORK/bad.log"
    not_ok "a variant that does not build stops the bench with an error"
elif grep -q "this variant does not build" "$WORK/bad.log"; then
    ok "a variant that does not build stops the bench with an error, its build log shown"
else
    cat "$WORK/bad.log"
    not_ok "a variant that does not build stops the bench with an error, its build log shown"
fi
finish
