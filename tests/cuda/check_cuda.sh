#!/bin/sh
# check_cuda.sh: `make check-cuda`, on a machine with an NVIDIA GPU.
#
# For each model below (DAMEX: dataset-aware routing, capacity drops, batch
# priority, gate noise; soft MoE; tests/e2e/routers.moe: the attention,
# switch and cosine routers and expert choice; the hierarchical layers;
# CutMix), the CUDA trainer against the CPU trainer (the
# reference) of the same .moe file, on the same data and seed:
#   - the first step's loss and every parameter gradient (--dump-step),
#     in fp32 (relative error per tensor within 1e-4), tf32 (3e-2) and bf16
#     (operands rounded to bf16: 1e-1; the worst measured on an H200 on
#     2026-11-30 was 2.1e-2 in tf32 and 4.4e-2 in bf16, both a bias
#     gradient, whose tensor is small);
#     NaN or Inf never passes;
#   - a short fp32 run's logged training losses (within 1e-2);
# two runs of damex giving the same bits (determinism), and damex and hier
# with recompute = all (damex_rc, hier_rc) the same bits as without;
# and compute-sanitizer's memcheck over a few CUDA training steps of damex,
# routers, hier, hier14 (hier.moe with 196-token windows) and damex_rc.
# CHECK_CUDA_MODELS="routers hier" limits the models to those named.
# and, first, every kernel of kernels.cuh alone against its ops.h
# reference (tests/cuda/test_kernels.cu, kernel_ref.c; CHECK_CUDA_KERNELS=0
# leaves it out).
. "${top_srcdir:-.}/tests/e2e/common.sh"

if ! nvidia-smi -L > /dev/null 2>&1; then
    echo "1..0 # SKIP no GPU answers nvidia-smi"
    exit 77
fi
need_data || exit 1
PY=${PYTHON:-python3}

CMP="$PY $top_srcdir/tests/cuda/compare.py"
STEPS=${CHECK_CUDA_STEPS:-40}

# hier: the convolution stem, window attention (local and global) and
# the 2x2 merge; hier14: its first local windows at 14x14 (196 tokens: the
# attention's row tiles); soft_cm and damex_cm: every batch mixed by CutMix
# (the loss's mixed targets; damex's heads are per dataset)
hier14_moe "$WORK/hier14.moe"
with_cutmix "$top_srcdir/examples/soft_moe_mnist.moe" "$WORK/soft_cm.moe"
with_cutmix "$top_srcdir/examples/damex.moe" "$WORK/damex_cm.moe"
# damex_rc and hier_rc: recompute = all (the backward makes each MoE
# layer's expert rows, each attention layer's q, k, v and heads' outputs,
# each window attention layer's insides and each dense MLP's hidden values
# again, their rooms shared)
with_recompute "$top_srcdir/examples/damex.moe" "$WORK/damex_rc.moe" || not_ok "with_recompute edits damex.moe"
with_recompute "$top_srcdir/tests/e2e/hier.moe" "$WORK/hier_rc.moe" || not_ok "with_recompute edits hier.moe"
SPECS="damex:examples/damex.moe soft_moe_mnist:examples/soft_moe_mnist.moe routers:tests/e2e/routers.moe
    hier:tests/e2e/hier.moe hier14:$WORK/hier14.moe soft_cm:$WORK/soft_cm.moe damex_cm:$WORK/damex_cm.moe
    damex_rc:$WORK/damex_rc.moe hier_rc:$WORK/hier_rc.moe"
selected() {
    case " ${CHECK_CUDA_MODELS:-$1} " in *" $1 "*) return 0 ;; esac
    return 1
}

# Everything built at once, each in the background (one at a time, the
# builds took most of the run, and the device tool's calls are 600 s at
# most): the kernel tests (CHECK_CUDA_KERNELS=0 leaves them out), and each
# model's CPU trainer ($WORK/MODEL.cpu) and CUDA trainer ($WORK/MODEL); a
# build that succeeds leaves NAME.built.
NVCC=$(command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA_HOME=$(nvcc_home "$NVCC")
build_kernels() {
    ${CC:-cc} -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Wno-unknown-pragmas -I"$top_srcdir/templates/cpu" \
        -I"$top_srcdir/runtime" -c "$top_srcdir/tests/cuda/kernel_ref.c" -o "$WORK/kernel_ref.o" &&
        "$NVCC" -O2 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_90,code=compute_90 \
            -I"$top_srcdir/templates/cuda" -I"$top_srcdir/tests/cuda" -c "$top_srcdir/tests/cuda/test_kernels.cu" \
            -o "$WORK/test_kernels.o" &&
        ${CXX:-c++} -o "$WORK/test_kernels" "$WORK/test_kernels.o" "$WORK/kernel_ref.o" -L"$CUDA_HOME/lib64" \
            -Wl,-rpath,"$CUDA_HOME/lib64" -lcublasLt -lcublas -lcudart -lm
}
[ "${CHECK_CUDA_KERNELS:-1}" = 0 ] ||
    { build_kernels > "$WORK/test_kernels.build" 2>&1 && touch "$WORK/test_kernels.built"; } &
for spec in $SPECS; do
    model=${spec%%:*}
    selected "$model" || continue
    { BACKEND=cpu gen "$model.cpu" "${spec#*:}" > "$WORK/$model.cpu.gen" 2>&1 && touch "$WORK/$model.cpu.built"; } &
    { BACKEND=cuda gen "$model" "${spec#*:}" > "$WORK/$model.gen" 2>&1 && touch "$WORK/$model.built"; } &
done
wait

# the kernels one by one
if [ "${CHECK_CUDA_KERNELS:-1}" = 0 ]; then
    echo "# SKIP the kernels one by one: CHECK_CUDA_KERNELS=0"
elif [ -f "$WORK/test_kernels.built" ]; then
    "$WORK/test_kernels" > "$WORK/test_kernels.log" 2>&1
    rc=$?
    cat "$WORK/test_kernels.log"
    if [ $rc -eq 0 ]; then
        ok "every kernel against ops.h: $(tail -n 1 "$WORK/test_kernels.log")"
    else
        not_ok "every kernel against ops.h (exit $rc): $(tail -n 1 "$WORK/test_kernels.log")"
    fi
else
    cat "$WORK/test_kernels.build" 2>/dev/null
    not_ok "tests/cuda/test_kernels builds"
fi

for spec in $SPECS; do
    model=${spec%%:*}
    selected "$model" || continue
    [ -f "$WORK/$model.cpu.built" ] || { cat "$WORK/$model.cpu.gen"; not_ok "$model: the CPU trainer builds"; continue; }
    [ -f "$WORK/$model.built" ] || { cat "$WORK/$model.gen"; not_ok "$model: the CUDA trainer builds"; continue; }
    cpu=$WORK/$model.cpu
    cuda=$WORK/$model
    (cd "$cpu" && ./train --data "$DATA" --dump-step step.safetensors > dump.log 2>&1) ||
        { cat "$cpu/dump.log"; not_ok "$model: CPU dump"; continue; }
    for prec in fp32 tf32 bf16; do
        case $prec in fp32) tol=1e-4 ;; tf32) tol=3e-2 ;; bf16) tol=1e-1 ;; esac
        if (cd "$cuda" && ./train --data "$DATA" --precision $prec --dump-step step.$prec.safetensors > dump.$prec.log 2>&1) &&
            $CMP dumps "$cpu/step.safetensors" "$cuda/step.$prec.safetensors" $tol > "$WORK/$model.cmp.$prec" 2>&1; then
            ok "$model $prec: the loss and every gradient agree with the CPU: $(tail -n 1 "$WORK/$model.cmp.$prec")"
        else
            cat "$cuda/dump.$prec.log" "$WORK/$model.cmp.$prec"
            not_ok "$model $prec: the loss and every gradient agree with the CPU"
        fi
    done
    # expert choice (routers): an expert's last chosen token and the next
    # are often within float rounding of each other, and a swap (a
    # discrete change) sends the two runs apart within a few dozen steps,
    # so its curve is the first 12 steps, every 2
    steps=$STEPS every=10
    [ "$model" = routers ] && steps=12 every=2
    run="--data $DATA --steps $steps --log-every $every --eval-every 0 --max-eval 500 -q --metrics curve.jsonl"
    (cd "$cpu" && ./train $run > curve.log 2>&1) &&
        (cd "$cuda" && ./train $run --precision fp32 > curve.log 2>&1) &&
        $CMP curves "$cpu/curve.jsonl" "$cuda/curve.jsonl" 1e-2 > "$WORK/$model.curve" 2>&1
    if [ $? -eq 0 ]; then
        ok "$model: $steps fp32 steps follow the CPU's loss curve: $(tail -n 1 "$WORK/$model.curve")"
    else
        cat "$cpu/curve.log" "$cuda/curve.log" "$WORK/$model.curve" 2>/dev/null
        not_ok "$model: $steps fp32 steps follow the CPU's loss curve"
    fi
done

# moecc --summary's GPU memory is what the trainer allocates (its own
# count, which --bench prints), in the .moe file's precision
for spec in damex:examples/damex.moe routers:tests/e2e/routers.moe damex_rc:$WORK/damex_rc.moe hier_rc:$WORK/hier_rc.moe; do
    model=${spec%%:*}
    [ -x "$WORK/$model/train" ] || continue
    want=$(cd "$top_srcdir" && "$MOECC" --summary "${spec#*:}" | sed -n 's/^gpu memory: \([0-9,]*\) MiB.*/\1/p' | tr -d ,)
    got=$(cd "$WORK/$model" && ./train --bench --steps 3 2>&1 | sed -n 's/.*device memory \([0-9]*\) MiB.*/\1/p')
    if [ -n "$want" ] && [ -n "$got" ] && [ $((want - got)) -le 1 ] && [ $((got - want)) -le 1 ]; then
        ok "$model: moecc --summary's GPU memory, $want MiB, is what the trainer allocates ($got MiB)"
    else
        not_ok "$model: moecc --summary's GPU memory (${want:-none} MiB) is what the trainer allocates (${got:-none} MiB)"
    fi
done

# the same run twice gives the same bits (kernels.cuh: no float atomics,
# fixed-order sums; the loader's threads do not change the batches): 20
# steps of damex in its own precision (bf16), every weight and the
# optimizer state of the two checkpoints equal
det="--data $DATA --steps 20 --log-every 10 --eval-every 0 --max-eval 100 -q"
if [ -x "$WORK/damex/train" ]; then
    if (cd "$WORK/damex" && ./train $det --checkpoint det1.safetensors > det1.log 2>&1 &&
        ./train $det --checkpoint det2.safetensors > det2.log 2>&1) &&
        $CMP weights "$WORK/damex/det1.safetensors" "$WORK/damex/det2.safetensors" 0 > "$WORK/damex.det" 2>&1; then
        ok "damex: two runs of 20 bf16 steps end on the same bits: $(tail -n 1 "$WORK/damex.det")"
    else
        cat "$WORK/damex/det1.log" "$WORK/damex/det2.log" "$WORK/damex.det" 2>/dev/null
        not_ok "damex: two runs of 20 bf16 steps end on the same bits"
    fi
fi
# recompute = all changes where values live, not what they are: the same
# 20 bf16 steps end on the bits of the model without it
for model in damex hier; do
    [ -x "$WORK/$model/train" ] && [ -x "$WORK/${model}_rc/train" ] || continue
    if (cd "$WORK/$model" && { [ -f det1.safetensors ] || ./train $det --checkpoint det1.safetensors > det1.log 2>&1; }) &&
        (cd "$WORK/${model}_rc" && ./train $det --checkpoint rc.safetensors > rc.log 2>&1) &&
        $CMP weights "$WORK/$model/det1.safetensors" "$WORK/${model}_rc/rc.safetensors" 0 > "$WORK/${model}_rc.det" 2>&1; then
        ok "${model}_rc: 20 bf16 steps with recompute = all end on $model's bits: $(tail -n 1 "$WORK/${model}_rc.det")"
    else
        cat "$WORK/${model}_rc/rc.log" "$WORK/${model}_rc.det" 2>/dev/null
        not_ok "${model}_rc: 20 bf16 steps with recompute = all end on $model's bits"
    fi
done

SAN=$(command -v compute-sanitizer 2>/dev/null || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
if [ -z "$SAN" ]; then
    echo "# SKIP memcheck: compute-sanitizer not found"
else
    # damex: routing and capacity; routers: the other routers, expert
    # choice's sort among them; hier: the convolution stem, window
    # attention and the 2x2 merge; hier14: the attention's row tiles
    for model in damex routers hier hier14 damex_rc; do
        [ -x "$WORK/$model/train" ] || continue
        if (cd "$WORK/$model" && "$SAN" --tool memcheck --error-exitcode 3 ./train --synthetic --steps 3 --batch 32 \
            --metrics san.jsonl --checkpoint san.safetensors -q > san.log 2>&1) &&
            grep -q "ERROR SUMMARY: 0 errors" "$WORK/$model/san.log"; then
            ok "$model: compute-sanitizer memcheck of 3 training steps is clean"
        else
            tail -n 60 "$WORK/$model/san.log"
            not_ok "$model: compute-sanitizer memcheck of 3 training steps is clean"
        fi
    done
fi
finish
