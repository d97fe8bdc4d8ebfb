#!/bin/sh
# multihost.sh: libmoert's process group across machines. Three network
# namespaces joined by a bridge (in a fourth) stand for three hosts with
# addresses of their own, one rank on each (tests/tools/comm_peer, which
# opens the group as a trainer does, from torchrun's variables):
#   - the ranks find rank 0 through MASTER_ADDR = its host's address, not
#     loopback, and every rank gets rank 0's blob;
#   - rank 0 may start seconds after the others (they retry);
#   - a rank that dies without closing the group stops the ranks on the
#     other hosts (rank 2 through rank 0: two hops) with a message naming it.
# Needs root and iproute2 (ip netns); skipped where namespaces cannot be made.
. "${top_srcdir:-.}/tests/e2e/common.sh"

PEER=$top_builddir/tests/tools/comm_peer
if [ ! -x "$PEER" ]; then
    echo "1..0 # SKIP $PEER is not built"
    exit 77
fi
if [ "$(id -u)" -ne 0 ] || ! command -v ip > /dev/null 2>&1; then
    echo "1..0 # SKIP hosts in network namespaces need root and iproute2 (ip)"
    exit 77
fi
tag=mh$$
SW=${tag}sw
cleanup() {
    for n in a b c; do ip netns del "$tag$n" 2> /dev/null; done
    ip netns del "$SW" 2> /dev/null
}
trap cleanup EXIT
if ! ip netns add "$SW" 2> "$WORK/netns.err"; then
    echo "1..0 # SKIP cannot make a network namespace: $(head -n 1 "$WORK/netns.err")"
    exit 77
fi
ip -n "$SW" link add br0 type bridge && ip -n "$SW" link set br0 up || {
    not_ok "a bridge in the switch namespace"
    finish
    exit 1
}
i=1
for n in a b c; do
    ip netns add "$tag$n" &&
        ip link add "${tag}$n" type veth peer name "${tag}${n}p" &&
        ip link set "${tag}$n" netns "$tag$n" &&
        ip link set "${tag}${n}p" netns "$SW" &&
        ip -n "$SW" link set "${tag}${n}p" master br0 &&
        ip -n "$SW" link set "${tag}${n}p" up &&
        ip -n "$tag$n" addr add "10.213.0.$i/24" dev "${tag}$n" &&
        ip -n "$tag$n" link set "${tag}$n" up &&
        ip -n "$tag$n" link set lo up || {
        not_ok "host $n: a namespace with 10.213.0.$i on the bridge"
        finish
        exit 1
    }
    i=$((i + 1))
done

# rank R on host N: comm_peer ARGS in the background, its output in
# $WORK/<label>.<R>.log, its pid in pid<R>
PORT=$((30000 + $$ % 5000))
start_rank() { # LABEL R HOST ARGS...
    s_label=$1
    s_rank=$2
    s_host=$3
    shift 3
    ip netns exec "$tag$s_host" env RANK="$s_rank" WORLD_SIZE=3 LOCAL_RANK=0 MASTER_ADDR=10.213.0.1 \
        MASTER_PORT=$PORT "$PEER" "$@" > "$WORK/$s_label.$s_rank.log" 2>&1 &
    eval "pid$s_rank=\$!"
}

# three LABEL DELAY: ranks 1 and 2, then DELAY seconds later rank 0; every
# rank must exit 0 with rank 0's blob
three() {
    PORT=$((PORT + 1))
    start_rank "$1" 1 b
    start_rank "$1" 2 c
    sleep "$2"
    start_rank "$1" 0 a
    t_st=0
    wait "$pid0" || t_st=1
    wait "$pid1" || t_st=1
    wait "$pid2" || t_st=1
    [ $t_st -eq 0 ] &&
        [ "$(cat "$WORK/$1".*.log | grep -c 'of 3 (launcher torchrun, master 10.213.0.1:[0-9]*): blob ok')" -eq 3 ] &&
        return 0
    cat "$WORK/$1".*.log
    return 1
}
if three three 0; then
    ok "three hosts: every rank got rank 0's blob through 10.213.0.1"
else
    not_ok "three hosts: every rank gets rank 0's blob through 10.213.0.1"
fi
if three late 3; then
    ok "rank 0 starting 3 s after the others: they waited for it"
else
    not_ok "rank 0 starting 3 s after the others: they wait for it"
fi

# 3. rank 1 dies without closing the group
PORT=$((PORT + 1))
start_rank die 0 a die
start_rank die 1 b die
start_rank die 2 c die
t0=$(date +%s)
wait "$pid0"
s0=$?
wait "$pid2"
s2=$?
wait "$pid1"
s1=$?
t=$(($(date +%s) - t0))
if [ $s1 -eq 3 ] && [ $s0 -eq 1 ] && [ $s2 -eq 1 ] && [ $t -lt 30 ] &&
    grep -q 'comm_peer: rank 0: rank 1 ended without finishing' "$WORK/die.0.log" &&
    grep -q 'comm_peer: rank 2: rank 0 ended without finishing' "$WORK/die.2.log"; then
    ok "rank 1 died on host b: ranks 0 (host a) and 2 (host c) stopped within $t s, status 1, naming who ended"
else
    cat "$WORK"/die.*.log
    not_ok "rank 1 dies on host b: ranks 0 and 2 stop with status 1, naming who ended (statuses $s0 $s1 $s2 after $t s)"
fi
finish
