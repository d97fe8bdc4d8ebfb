#!/bin/sh
# parallel.sh: what can be checked of multi-GPU training without a GPU
# (the runs on GPUs are tests/cuda/check_dp.sh, in make check-cuda).
#   - the CUDA output's gradient buckets: each bucket is a range of
#     parameters handed to the all-reduce once the backward pass is done
#     with it; together they must cover the GPU's parameter arena exactly
#     once, from the last parameters to the first, each at least
#     bucket_mib (but the last);
#   - that arena: every tensor whole with data parallelism, at the
#     checkpoint's offsets; with expert parallelism each expert tensor's
#     share (1/expert of it) and the other tensors whole, packed in order;
#   - each GPU's arenas are laid out for its share of the batch, and the
#     expert-parallel code exchanges rows only in training;
#   - the CPU trainer of a model with a parallel statement trains the whole
#     batch as the same model without it does, to the bit, and writes the
#     same checkpoint (the format does not depend on the GPU count);
#   - scripts/ranks.sh, which the GPU tests and benchmarks start their
#     ranks with, starts N processes as torchrun would and fails when one
#     of them fails.
. "${top_srcdir:-.}/tests/e2e/common.sh"
need_data || exit 1

DP=$top_srcdir/tests/cuda/dp.moe
sed '/^parallel(/d' "$DP" > "$WORK/dp1.moe"
sed 's/^parallel(data = 2, bucket_mib = 0.1)/parallel(data = 2, expert = 2)/' "$DP" > "$WORK/ep.moe"
grep -q '^parallel(data = 2, expert = 2)' "$WORK/ep.moe" || { not_ok "dp.moe has the parallel statement the test expects"; finish; exit 1; }

# arena_floats DIR: the floats of DIR/model.cu's parameter arena (DEV_LAYOUT)
arena_floats() { sed -n 's/^ *\([0-9]*\)L, \/\* params \*\/.*/\1/p' "$1/model.cu"; }

# arena DIR P: DIR/model.cu's DEV_TENSOR_OFF packs the tensors of TENSORS in
# order, expert tensors at 1/P of their size, into DEV_LAYOUT.params floats
arena() {
    awk -v P="$2" -v total="$(arena_floats "$1")" '
        /^const tensor_info TENSORS/ { inT = 1; next }
        /^const int64_t DEV_TENSOR_OFF/ { inD = 1; next }
        /^};/ { inT = inD = 0 }
        inT && /^    \{ "/ { s = $0; sub(/^    \{ "[^"]*", /, "", s); gsub(/[^0-9.e-]+/, " ", s); m = split(s, f, " ")
                 nt++; numel[nt] = f[2] + 0; expert[nt] = f[m] + 0; whole += f[2]; if (f[m] == 1) experts += f[2] }
        inD { s = $0; gsub(/[^0-9]+/, " ", s); m = split(s, f, " "); for (i = 1; i <= m; i++) off[++nd] = f[i] + 0 }
        END { if (nt == 0 || nd != nt) { print "DEV_TENSOR_OFF has " nd " offsets for " nt " tensors"; exit 1 }
              at = 0
              for (t = 1; t <= nt; t++) {
                  if (off[t] != at) { print "tensor " t " at " off[t] ", not " at; exit 1 }
                  at += expert[t] ? numel[t] / P : numel[t] }
              if (at != total) { print "the arena holds " total " floats, the tensors " at; exit 1 }
              print "each GPU holds " total " of the " whole " parameters (" experts " in expert tensors, 1/" P " of them here)" }' \
        "$1/model.cu"
}

# buckets FILE MIB: the grad_ready calls of FILE/model.cu tile the parameters
buckets() {
    params=$(arena_floats "$1")
    grep -o 'd->grad_ready(k, d, [0-9]*L, [0-9]*L)' "$1/model.cu" | tr -dc '0-9 \n' |
        awk -v n="$params" -v min="$2" '
            { lo = $1; hi = $2; k++
              if (hi != (k == 1 ? n : prev)) { print "bucket " k " ends at " hi ", not at " (k == 1 ? n : prev); bad = 1 }
              if (lo >= hi) { print "bucket " k " is empty: [" lo ", " hi ")"; bad = 1 }
              if (lo > 0 && (hi - lo) * 4 < min * 1048576) { print "bucket " k " holds " (hi - lo) " floats, under " min " MiB"; bad = 1 }
              prev = lo }
            END { if (k == 0 || prev != 0) { print "the buckets do not reach parameter 0"; bad = 1 }
                  if (!bad) print k (k == 1 ? " bucket covers" : " buckets tile") " the " n " parameters"; exit bad }'
}
if (cd "$top_srcdir" && "$MOECC" --target cuda "$DP" -o "$WORK/dp") > "$WORK/dp.log" 2>&1 &&
    out=$(buckets "$WORK/dp" 0.1); then
    ok "data parallel, bucket_mib = 0.1: $out"
else
    cat "$WORK/dp.log"
    echo "$out"
    not_ok "data parallel, bucket_mib = 0.1: the buckets tile the parameters"
fi
if "$MOECC" --target cuda "$WORK/ep.moe" -o "$WORK/ep" > "$WORK/ep.log" 2>&1 && out=$(buckets "$WORK/ep" 16); then
    ok "expert parallel, the default 16 MiB: $out"
else
    cat "$WORK/ep.log"
    echo "$out"
    not_ok "expert parallel, the default 16 MiB: the buckets tile the parameters"
fi
for spec in "data parallel:dp:1" "expert parallel:ep:2"; do
    IFS=: read -r label dir p <<EOF
$spec
EOF
    if out=$(arena "$WORK/$dir" "$p"); then
        ok "$label: the parameter arena: $out"
    else
        echo "$out"
        not_ok "$label: DEV_TENSOR_OFF packs the tensors (expert ones at 1/$p) into DEV_LAYOUT.params"
    fi
done
if grep -q '^#define LOCAL_BATCH (BATCH / PARALLEL_DATA)' "$WORK/dp/model.h" &&
    grep -q '^#define PARALLEL_DATA 2$' "$WORK/dp/model.h" && grep -q '^#define BATCH 128 ' "$WORK/dp/model.h" &&
    grep -q 'dropout_mask(k, A(MASK[0-9]*), (int64_t)B \* 1024, .*d->row0 \* 1024)' "$WORK/dp/model.cu"; then
    ok "each GPU's arenas hold its share of the batch (PARALLEL_DATA 2, LOCAL_BATCH = BATCH / 2), random draws offset by its first sample"
else
    not_ok "model.h says the GPU count and each GPU's share of the batch; dropout draws by the sample's place in the batch"
fi
# expert parallelism: the exchanging calls (template argument 2) only in
# training, evaluation on each GPU alone (template argument 1)
fw_ep=$(grep -c 'moe_experts_forward<[^>]*, 2>' "$WORK/ep/model.cu")
fw_one=$(grep -c 'moe_experts_forward<[^>]*, 1>' "$WORK/ep/model.cu")
bw_ep=$(grep -c 'moe_experts_backward<[^>]*, 2>' "$WORK/ep/model.cu")
guards=$(grep -c 'if (train) /\* expert parallelism' "$WORK/ep/model.cu")
if [ "$fw_ep" -eq 2 ] && [ "$fw_one" -eq 2 ] && [ "$bw_ep" -eq 2 ] && [ "$guards" -eq 2 ]; then
    ok "expert parallel: both MoE layers exchange rows in training and evaluate on each GPU alone"
else
    not_ok "expert parallel: training exchanges, evaluation alone (forward $fw_ep/$fw_one, backward $bw_ep, guards $guards)"
fi

# the CPU trainer ignores the parallel statement
run="--data $DATA --steps 6 --log-every 2 --eval-every 0 --max-eval 300 --batch 32 -q"
if gen dp tests/cuda/dp.moe && gen dp1 "$WORK/dp1.moe" &&
    (cd "$WORK/dp" && ./train $run > run.log 2>&1) && (cd "$WORK/dp1" && ./train $run > run.log 2>&1); then
    a=$(grep -o '"loss":[^,]*' "$WORK/dp/dp.metrics.jsonl" | tr '\n' ' ')
    b=$(grep -o '"loss":[^,]*' "$WORK/dp1/dp.metrics.jsonl" | tr '\n' ' ')
    # every tensor of the two checkpoints, to the bit (numpy reads them: the
    # python configure found with torch has it)
    same=yes
    py=${PYTHON:-python3}
    [ -n "${PYTHON_TORCH:-}" ] && [ "$PYTHON_TORCH" != no ] && py=$PYTHON_TORCH
    if "$py" -c 'import numpy' 2> /dev/null; then
        "$py" "$top_srcdir/tests/cuda/compare.py" weights "$WORK/dp1/dp.safetensors" \
            "$WORK/dp/dp.safetensors" 0 > "$WORK/ckpt.cmp" 2>&1 || same=no
    else
        echo "# SKIP the checkpoints' tensors: no numpy"
    fi
    if [ -n "$a" ] && [ "$a" = "$b" ] && [ $same = yes ]; then
        ok "the CPU trainer of a parallel(data = 2) model trains as the model without it: losses $a; $(tail -n 1 "$WORK/ckpt.cmp" 2> /dev/null)"
    else
        echo "with: $a"
        echo "without: $b"
        cat "$WORK/ckpt.cmp" 2> /dev/null
        not_ok "the CPU trainer of a parallel(data = 2) model trains as the model without it"
    fi
else
    cat "$WORK/dp/run.log" "$WORK/dp1/run.log" 2>/dev/null
    not_ok "the CPU trainers of dp.moe with and without its parallel statement build and run"
fi
# the launcher, on a stand-in trainer that says what it was given
. "$top_srcdir/scripts/ranks.sh"
mkdir -p "$WORK/fake"
cat > "$WORK/fake/train" <<'EOF'
#!/bin/sh
echo "rank=$RANK world=$WORLD_SIZE local=$LOCAL_RANK addr=$MASTER_ADDR port=$MASTER_PORT args=$*"
[ "$RANK" != "${FAIL_RANK:-}" ]
EOF
chmod +x "$WORK/fake/train"
if ranks "$WORK/fake" 4 --steps 3 "two words" > "$WORK/ranks.out" 2>&1; then
    port=$(sed -n 's/.*port=\([0-9]*\).*/\1/p' "$WORK/fake/rank0.log")
    same=yes
    for i in 0 1 2 3; do
        [ "$(cat "$WORK/fake/rank$i.log")" = "rank=$i world=4 local=$i addr=127.0.0.1 port=$port args=--steps 3 two words" ] ||
            same=no
    done
    ranks "$WORK/fake" 4 > /dev/null 2>&1
    port2=$(sed -n 's/.*port=\([0-9]*\).*/\1/p' "$WORK/fake/rank0.log")
    if [ $same = yes ] && [ -n "$port" ] && [ "$port2" != "$port" ]; then
        ok "ranks.sh: 4 ranks get RANK, WORLD_SIZE, LOCAL_RANK, one MASTER_PORT (a new one each run) and the arguments"
    else
        cat "$WORK"/fake/rank*.log
        not_ok "ranks.sh: 4 ranks get RANK, WORLD_SIZE, LOCAL_RANK, one MASTER_PORT (a new one each run) and the arguments"
    fi
else
    cat "$WORK/ranks.out"
    not_ok "ranks.sh: 4 ranks of a trainer that succeeds succeed"
fi
export FAIL_RANK=2
if ranks "$WORK/fake" 4 > "$WORK/ranks.out" 2>&1; then
    not_ok "ranks.sh: a run with a failing rank fails"
elif grep -q "rank2.log" "$WORK/ranks.out" && grep -q "rank=3 " "$WORK/ranks.out"; then
    ok "ranks.sh: a run with a failing rank fails and shows every rank's log"
else
    cat "$WORK/ranks.out"
    not_ok "ranks.sh: a run with a failing rank fails and shows every rank's log"
fi
finish
