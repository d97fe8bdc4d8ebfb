# scripts/ranks.sh: start a multi-GPU trainer on this host as torchrun
# would, one process per GPU. Sourced (POSIX sh) by tests/cuda/check_dp.sh
# and bench/gpu.sh; tested by tests/e2e/parallel.sh.
#
#   ranks_start DIR N ARGS...
#       starts N processes of DIR/train ARGS..., rank i with RANK=i,
#       WORLD_SIZE=N, LOCAL_RANK=i (so on GPU i), MASTER_ADDR=127.0.0.1 and
#       MASTER_PORT a port of its own for each call (RANKS_PORT and up);
#       rank i writes DIR/<RANKS_LOG>i.log (RANKS_LOG: "rank" unless set);
#       their process ids, in rank order, in RANKS_PIDS
#   ranks_wait
#       waits for the processes of the last ranks_start; fails when one of
#       them failed, after printing every rank's log
#   ranks DIR N ARGS...
#       both: the run, as one command

RANKS_PORT=${RANKS_PORT:-$((29500 + $$ % 2000))}

ranks_start() {
    rs_dir=$1
    rs_n=$2
    shift 2
    RANKS_PORT=$((RANKS_PORT + 1))
    rs_log=${RANKS_LOG:-rank}
    RANKS_PIDS=
    RANKS_LOGS=
    rs_i=0
    while [ $rs_i -lt "$rs_n" ]; do
        (cd "$rs_dir" && RANK=$rs_i WORLD_SIZE=$rs_n LOCAL_RANK=$rs_i MASTER_ADDR=127.0.0.1 \
            MASTER_PORT=$RANKS_PORT exec ./train "$@" > "$rs_log$rs_i.log" 2>&1) &
        RANKS_PIDS="$RANKS_PIDS $!"
        RANKS_LOGS="$RANKS_LOGS $rs_dir/$rs_log$rs_i.log"
        rs_i=$((rs_i + 1))
    done
}

ranks_wait() {
    rw_status=0
    for rw_p in $RANKS_PIDS; do
        wait "$rw_p" || rw_status=1
    done
    if [ $rw_status -ne 0 ]; then
        for rw_f in $RANKS_LOGS; do
            echo "# $rw_f:"
            cat "$rw_f"
        done
    fi
    return $rw_status
}

ranks() {
    ranks_start "$@"
    ranks_wait
}
