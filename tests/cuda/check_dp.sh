#!/bin/sh
# check_dp.sh: data parallelism, part of `make check-cuda` on a machine with
# two or more NVIDIA GPUs (skipped with fewer).
#
# tests/cuda/dp.moe is compiled as it is (parallel(data = 2): two processes,
# one per GPU, each on half of every batch), with expert parallelism
# (parallel(data = 2, expert = 2): each GPU computes half of the experts on
# the rows of both) and without its parallel statement (one GPU, the whole
# batch), and in fp32:
#   - 50 steps on 2 GPUs, data parallel and expert parallel (each GPU
#     holding its half of the experts), follow the 1-GPU run's loss curve,
#     end with the same weights, optimizer state and sampler state, and
#     evaluate the test sets as it does;
#   - a 2-GPU checkpoint resumes on 1 GPU and on the CPU, and a 1-GPU one on
#     2 GPUs, and each goes on as the run that was never stopped (and an
#     expert-parallel one on 1 GPU);
#   - a rank that dies stops the other with a clear error instead of a hang;
#   - a stop signal that reaches one rank stops both after the same step,
#     with a checkpoint;
#   - a launch with the wrong number of processes is refused;
#   - mpirun -np 2 starts it without any other setting (when mpirun exists).
# Ranks are started as torchrun would: RANK, WORLD_SIZE, LOCAL_RANK,
# MASTER_ADDR, MASTER_PORT. NCCL_NVLS_ENABLE=0 unless set.
# CHECK_DP_ONLY="kill signal launch mpirun" runs only those checks (a quick
# run: the expert-parallel and CPU trainers are not built); unset, all.
. "${top_srcdir:-.}/tests/e2e/common.sh"

gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
if [ "$gpus" -lt 2 ]; then
    echo "1..0 # SKIP data parallelism needs 2 GPUs, this machine has $gpus"
    exit 77
fi
need_data || exit 1
NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
export NCCL_NVLS_ENABLE
CMP="${PYTHON:-python3} $top_srcdir/tests/cuda/compare.py"
. "$top_srcdir/scripts/ranks.sh"

# want CHECK: whether to run it (CHECK_DP_ONLY)
want() {
    [ -z "${CHECK_DP_ONLY:-}" ] && return 0
    case " $CHECK_DP_ONLY " in *" $1 "*) return 0 ;; esac
    return 1
}

sed '/^parallel(/d' "$top_srcdir/tests/cuda/dp.moe" > "$WORK/dp1.moe"
sed 's/^parallel(data = 2, /parallel(data = 2, expert = 2, /' "$top_srcdir/tests/cuda/dp.moe" > "$WORK/ep.moe"
grep -q 'expert = 2' "$WORK/ep.moe" || { not_ok "dp.moe has the parallel statement the test expects"; finish; exit 1; }
BACKEND=cuda gen dp tests/cuda/dp.moe || { not_ok "dp.moe: the 2-GPU trainer builds"; finish; exit 1; }
mv "$WORK/dp" "$WORK/dp2"
D2=$WORK/dp2
D1=$WORK/dp1
DC=$WORK/dpcpu
DE=$WORK/ep
run="--data $DATA --eval-every 0 --max-eval 2000"
BACKEND=cuda gen dp1 "$WORK/dp1.moe" || { not_ok "dp.moe: the 1-GPU trainer builds"; finish; exit 1; }
if want train; then
BACKEND=cuda gen ep "$WORK/ep.moe" || { not_ok "dp.moe: the expert-parallel trainer builds"; finish; exit 1; }
BACKEND=cpu gen dp tests/cuda/dp.moe || { not_ok "dp.moe: the CPU trainer builds"; finish; exit 1; }
mv "$WORK/dp" "$WORK/dpcpu"

# 50 steps: 2 GPUs against 1. The losses agree to about 1e-9 (the sums
# over the batch are split differently); weights within 1e-2 only, because
# AdamW turns the rounding noise of gradients that are zero in exact
# arithmetic (the key bias: softmax ignores it) into steps of the size of
# the learning rate, with signs that differ between any two runs.
if ranks "$D2" 2 $run --steps 50 &&
    (cd "$D1" && ./train $run --steps 50 -q > run.log 2>&1) &&
    $CMP curves "$D1/dp.metrics.jsonl" "$D2/dp.metrics.jsonl" 1e-6 > "$WORK/curve" 2>&1 &&
    $CMP weights "$D1/dp.safetensors" "$D2/dp.safetensors" 1e-2 > "$WORK/weights" 2>&1 &&
    $CMP evals "$D1/dp.metrics.jsonl" "$D2/dp.metrics.jsonl" 1e-4 > "$WORK/evals" 2>&1; then
    ok "50 fp32 steps on 2 GPUs follow 1 GPU: $(tail -n 1 "$WORK/curve"); $(tail -n 1 "$WORK/weights"); $(tail -n 1 "$WORK/evals")"
    grep "test accuracy" "$D2/rank0.log" "$D1/run.log" | sed 's/^/# /'
else
    cat "$D1/run.log" "$WORK/curve" "$WORK/weights" "$WORK/evals" 2>/dev/null
    not_ok "50 fp32 steps on 2 GPUs follow 1 GPU (loss within 1e-6, weights within 1e-2, evaluation)"
fi

# 50 steps: expert parallel on 2 GPUs against 1 (the experts' products sum
# their rows in another order, hence not the same 1e-9)
if ranks "$DE" 2 $run --steps 50 &&
    $CMP curves "$D1/dp.metrics.jsonl" "$DE/dp.metrics.jsonl" 1e-6 > "$WORK/ep.curve" 2>&1 &&
    $CMP weights "$D1/dp.safetensors" "$DE/dp.safetensors" 1e-2 > "$WORK/ep.weights" 2>&1 &&
    $CMP evals "$D1/dp.metrics.jsonl" "$DE/dp.metrics.jsonl" 1e-4 > "$WORK/ep.evals" 2>&1; then
    ok "50 fp32 steps expert parallel on 2 GPUs follow 1 GPU: $(tail -n 1 "$WORK/ep.curve"); $(tail -n 1 "$WORK/ep.weights"); $(tail -n 1 "$WORK/ep.evals")"
    grep "test accuracy" "$DE/rank0.log" | sed 's/^/# /'
else
    cat "$WORK/ep.curve" "$WORK/ep.weights" "$WORK/ep.evals" 2>/dev/null
    not_ok "50 fp32 steps expert parallel on 2 GPUs follow 1 GPU (loss within 1e-6, weights within 1e-2, evaluation)"
fi
# the same with the exchange in one piece per layer (no overlap)
export MOECC_EP_OVERLAP=0
if ranks "$DE" 2 $run --steps 50 &&
    $CMP curves "$D1/dp.metrics.jsonl" "$DE/dp.metrics.jsonl" 1e-6 > "$WORK/ep0.curve" 2>&1 &&
    $CMP weights "$D1/dp.safetensors" "$DE/dp.safetensors" 1e-2 > "$WORK/ep0.weights" 2>&1; then
    ok "MOECC_EP_OVERLAP=0: 50 fp32 steps expert parallel follow 1 GPU: $(tail -n 1 "$WORK/ep0.curve"); $(tail -n 1 "$WORK/ep0.weights")"
else
    cat "$WORK/ep0.curve" "$WORK/ep0.weights" 2>/dev/null
    not_ok "MOECC_EP_OVERLAP=0: 50 fp32 steps expert parallel follow 1 GPU"
fi
unset MOECC_EP_OVERLAP

# bf16 precision, where the exchanged rows travel as bf16: expert parallel
# against 1 GPU, both in bf16 (the products round the same operands; the
# experts' outputs and the rows' gradients are rounded in transit too).
# Measured on 2 x H200 (2026-11-30, two runs): losses within 2.4e-4 and
# 9.1e-5 over 50 steps, gradient norms within 1.42e-2 and 1.91e-2 (one
# batch's norm moves more than the loss under bf16 rounding in transit);
# the bounds are 1e-2 and 5e-2.
bf="--precision bf16 --metrics bf16.jsonl --checkpoint bf16.safetensors"
if ranks "$DE" 2 $run --steps 50 $bf &&
    (cd "$D1" && ./train $run --steps 50 $bf -q > bf16.log 2>&1) &&
    $CMP curves "$D1/bf16.jsonl" "$DE/bf16.jsonl" 1e-2 5e-2 > "$WORK/bf.curve" 2>&1; then
    ok "50 bf16 steps expert parallel (bf16 rows) follow 1 GPU in bf16: $(tail -n 1 "$WORK/bf.curve")"
else
    cat "$D1/bf16.log" "$WORK/bf.curve" 2>/dev/null
    not_ok "50 bf16 steps expert parallel (bf16 rows) follow 1 GPU in bf16 (loss within 1e-2, gradient norms within 5e-2)"
fi

# checkpoints across GPU counts: stopped at step 30 of 50, resumed elsewhere,
# against the 1-GPU run above that was never stopped
resume() { # LABEL FROM-DIR TO-DIR TO-RANKS(0: CPU) TOL
    label=$1
    from=$2
    to=$3
    n=$4
    tol=$5
    rm -f "$from/dp.safetensors" "$from/dp.metrics.jsonl" "$to/dp.safetensors" "$to/dp.metrics.jsonl"
    if [ "$from" = "$D2" ] || [ "$from" = "$DE" ]; then
        ranks "$from" 2 $run --steps 50 --stop-after 30 || return 1
    else
        (cd "$from" && ./train $run --steps 50 --stop-after 30 -q > stop.log 2>&1) || { cat "$from/stop.log"; return 1; }
    fi
    cp "$from/dp.safetensors" "$to/dp.safetensors"
    if [ "$n" -ge 2 ]; then
        ranks "$to" "$n" $run --steps 50 --resume || return 1
    else
        (cd "$to" && ./train $run --steps 50 --resume -q > resume.log 2>&1) || { cat "$to/resume.log"; return 1; }
    fi
    $CMP curves-subset "$to/dp.metrics.jsonl" "$WORK/ref.metrics.jsonl" "$tol" > "$WORK/resume.$label" 2>&1 ||
        { cat "$WORK/resume.$label"; return 1; }
}
cp "$D1/dp.metrics.jsonl" "$WORK/ref.metrics.jsonl"
for spec in "2gpu-1gpu:$D2:$D1:1:1e-6" "2gpu-cpu:$D2:$DC:0:1e-4" "1gpu-2gpu:$D1:$D2:2:1e-6" \
    "2gpu-expert-parallel-1gpu:$DE:$D1:1:1e-6" "1gpu-2gpu-expert-parallel:$D1:$DE:2:1e-6"; do
    IFS=: read -r label from to n tol <<EOF
$spec
EOF
    if resume "$label" "$from" "$to" "$n" "$tol"; then
        ok "checkpoint $label: resumed at step 30, steps 35-50 as never stopped: $(tail -n 1 "$WORK/resume.$label")"
    else
        not_ok "checkpoint $label: resumed at step 30, steps 35-50 as never stopped (within $tol)"
    fi
done

fi # want train

# a rank that dies: the other stops within 30 s, saying which
if want kill; then
RANKS_LOG=kill
ranks_start "$D2" 2 --synthetic --steps 1000000 -q
RANKS_LOG=
set -- $RANKS_PIDS
p0=$1
p1=$2
sleep 15
kill -9 $p1 2> /dev/null
t=0
while kill -0 $p0 2> /dev/null && [ $t -lt 30 ]; do
    sleep 1
    t=$((t + 1))
done
if kill -0 $p0 2> /dev/null; then
    kill -9 $p0
    wait $p0 2> /dev/null
    not_ok "rank 1 killed: rank 0 stops within 30 s (it still ran)"
else
    wait $p0
    st=$?
    if [ $st -ne 0 ] && grep -q "rank 1 ended" "$D2/kill0.log"; then
        ok "rank 1 killed: rank 0 stopped after ${t} s with status $st: $(grep 'rank 1 ended' "$D2/kill0.log")"
    else
        cat "$D2/kill0.log"
        not_ok "rank 1 killed: rank 0 stops with an error naming rank 1 (status $st)"
    fi
fi
wait $p1 2> /dev/null
fi

# a stop signal (Ctrl-C) that reaches rank 1 only: both stop after the same
# step, the next metrics record, and rank 0 writes the checkpoint
if want signal; then
rm -f "$D2/sig.safetensors"
RANKS_LOG=sig
ranks_start "$D2" 2 $run --steps 1000000 --log-every 20 --checkpoint sig.safetensors --metrics sig.jsonl
RANKS_LOG=
set -- $RANKS_PIDS
p0=$1
p1=$2
sleep 20
kill -INT "$p1" 2> /dev/null
t=0
while { kill -0 "$p0" || kill -0 "$p1"; } 2> /dev/null && [ $t -lt 60 ]; do
    sleep 1
    t=$((t + 1))
done
kill -9 "$p0" "$p1" 2> /dev/null && echo "# still running after 60 s: killed"
wait "$p0"
s0=$?
wait "$p1"
s1=$?
if [ $s0 -eq 0 ] && [ $s1 -eq 0 ] && [ -s "$D2/sig.safetensors" ] &&
    grep -q "stopped after step [0-9]*0 by a signal" "$D2/sig0.log"; then
    ok "SIGINT to rank 1 alone: both ranks stopped ${t} s later, exit 0; $(grep -o 'stopped after step [0-9]* by a signal' "$D2/sig0.log")"
else
    cat "$D2/sig0.log" "$D2/sig1.log"
    not_ok "SIGINT to rank 1 alone stops both ranks with a checkpoint (exit $s0 and $s1 after $t s)"
fi
fi

# the wrong number of processes
if want launch; then
if (cd "$D2" && ./train --synthetic --steps 1 > one.log 2>&1); then
    not_ok "the 2-GPU trainer started alone is refused (it ran)"
elif grep -q "compiled for 2 GPUs" "$D2/one.log"; then
    ok "the 2-GPU trainer started alone is refused: $(head -n 1 "$D2/one.log")"
else
    cat "$D2/one.log"
    not_ok "the 2-GPU trainer started alone is refused with a message"
fi
if ranks "$D1" 2 --synthetic --steps 1; then
    not_ok "the 1-GPU trainer started as 2 processes is refused (it ran)"
elif grep -q "compiled for one GPU" "$D1/rank0.log"; then
    ok "the 1-GPU trainer started as 2 processes is refused: $(head -n 1 "$D1/rank0.log")"
else
    not_ok "the 1-GPU trainer started as 2 processes is refused with a message"
fi

fi # want launch

# mpirun, with nothing else set
MPIRUN=$(command -v mpirun 2> /dev/null)
if ! want mpirun; then
    :
elif [ -z "$MPIRUN" ]; then
    echo "# SKIP mpirun: not found"
elif (cd "$D2" && env -u MASTER_ADDR -u MASTER_PORT "$MPIRUN" --allow-run-as-root --oversubscribe -np 2 \
    -x NCCL_NVLS_ENABLE ./train --synthetic --steps 20 > mpi.log 2>&1); then
    ok "mpirun -np 2 trains: $(grep -c . "$D2/mpi.log") lines of output, exit 0"
else
    cat "$D2/mpi.log"
    not_ok "mpirun -np 2 trains"
fi
finish
