#!/bin/sh
# damex.sh: the flagship example end to end on the real mixture: it
# compiles, builds warning-free, trains (the loss falls), resumes exactly
# (bit-identical checkpoint), stops cleanly on SIGINT, refuses a damaged
# checkpoint, and its first step matches PyTorch.
. "${top_srcdir:-.}/tests/e2e/common.sh"

if ! need_data; then
    echo "1..0 # SKIP no data"
    exit 77
fi
if gen damex; then ok "damex compiles and builds without warnings"; else not_ok "damex builds"; finish; exit 1; fi
cd "$WORK/damex" || exit 1
T="./train --data $DATA --batch 32 --max-eval 200 -q"

# training: the loss falls
if $T --steps 60 --log-every 10 --eval-every 0 -c run.safetensors -m run.jsonl > run.log 2>&1; then
    first=$(grep '"kind":"train"' run.jsonl | head -n 1 | sed 's/.*"loss":\([0-9.e+-]*\).*/\1/')
    last=$(grep '"kind":"train"' run.jsonl | tail -n 1 | sed 's/.*"loss":\([0-9.e+-]*\).*/\1/')
    if awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a - 0.1) }'; then
        ok "the loss falls ($first -> $last)"
    else
        not_ok "the loss falls ($first -> $last)"
    fi
    if grep -q '"kind":"eval"' run.jsonl && grep -q 'dataset_expert' run.jsonl; then
        ok "metrics hold evaluations and routing tables"
    else
        not_ok "metrics hold evaluations and routing tables"
    fi
    if grep -q "test accuracy per dataset" run.log && grep -q "routing of blocks.1.moe" run.log; then
        ok "the trainer prints accuracy per dataset and the routing table"
    else
        cat run.log
        not_ok "the trainer prints accuracy per dataset and the routing table"
    fi
else
    cat run.log
    not_ok "training runs"
fi

# resume: stopped after step 4 and resumed = never stopped, bit for bit
$T --steps 8 --eval-every 0 -c a.safetensors -m a.jsonl > /dev/null 2>&1
$T --steps 8 --stop-after 4 --eval-every 0 -c b.safetensors -m b.jsonl > /dev/null 2>&1
$T --steps 8 --resume --eval-every 0 -c b.safetensors -m b.jsonl > /dev/null 2>&1
if [ -s a.safetensors ] && cmp -s a.safetensors b.safetensors; then
    ok "resume is exact: the checkpoints are identical"
else
    not_ok "resume is exact"
fi

# a diverging run stops with a clear error and leaves the checkpoint as it was
cp a.safetensors div.safetensors
if $T --steps 16 --resume --lr 1e30 --eval-every 0 --checkpoint-every 0 --log-every 4 -c div.safetensors \
    -m div.jsonl > div.log 2>&1; then
    not_ok "a diverging run is stopped (it exited 0)"
elif grep -q "training diverged" div.log && cmp -s a.safetensors div.safetensors; then
    ok "a diverging run is stopped, its checkpoint untouched: $(grep -m 1 diverged div.log)"
else
    cat div.log
    not_ok "a diverging run is stopped with a clear error, its checkpoint untouched"
fi

# SIGINT: a checkpoint, a clean exit, and the run resumes from it
$T --steps 100000 --eval-every 0 --log-every 1 -c sig.safetensors -m sig.jsonl > sig.log 2>&1 &
pid=$!
i=0
while [ $i -lt 600 ] && ! grep -q '"step":2,' sig.jsonl 2>/dev/null; do
    sleep 0.1
    i=$((i + 1))
done
kill -INT $pid
wait $pid
rc=$?
if [ $rc -eq 0 ] && grep -q "by a signal" sig.log && [ -s sig.safetensors ] &&
    $T --steps 1 --resume -c sig.safetensors -m sig.jsonl > /dev/null 2>&1; then
    ok "SIGINT saves a checkpoint and exits cleanly"
else
    cat sig.log
    not_ok "SIGINT saves a checkpoint and exits cleanly (exit $rc)"
fi

# damaged checkpoints are refused with the path and the problem
head -c 1000 a.safetensors > trunc.safetensors
if $T --steps 9 --resume -c trunc.safetensors > trunc.log 2>&1; then
    not_ok "a truncated checkpoint is refused"
elif grep -q "trunc.safetensors" trunc.log; then
    ok "a truncated checkpoint is refused: $(head -n 1 trunc.log)"
else
    cat trunc.log
    not_ok "a truncated checkpoint is refused with its path"
fi
printf 'not a checkpoint at all' > foreign.safetensors
if ! $T --steps 9 --resume -c foreign.safetensors > foreign.log 2>&1 && grep -q "foreign.safetensors" foreign.log; then
    ok "a foreign file is refused: $(head -n 1 foreign.log)"
else
    cat foreign.log
    not_ok "a foreign file is refused"
fi

# the CPU trainer is one process: a launcher's second copy would write the
# same files, so it is refused before anything is read or written
rm -f mpi.safetensors
if OMPI_COMM_WORLD_RANK=1 OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_LOCAL_RANK=1 OMPI_COMM_WORLD_LOCAL_SIZE=2 \
    $T --steps 2 -c mpi.safetensors > mpi.log 2>&1; then
    not_ok "the CPU trainer started by mpirun -np 2 is refused (it ran)"
elif grep -q "one process" mpi.log && [ ! -e mpi.safetensors ]; then
    ok "the CPU trainer started by mpirun -np 2 is refused: $(head -n 1 mpi.log)"
else
    cat mpi.log
    not_ok "the CPU trainer started by mpirun -np 2 is refused with a message, writing nothing"
fi

# one step against PyTorch, in fp32, same weights, batch and gate noise
torch_check damex
finish
