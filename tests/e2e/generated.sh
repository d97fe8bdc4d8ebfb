#!/bin/sh
# generated.sh: generated/ holds what moecc emits for every example the
# backend generates; fail when it differs from what moecc emits now
# (refresh it with `make update-generated`).
. "${top_srcdir:-.}/tests/e2e/common.sh"

n=0
for dir in "$top_srcdir"/generated/*/; do
    name=$(basename "$dir")
    n=$((n + 1))
    if ! (cd "$top_srcdir" && "$MOECC" "examples/$name.moe" -o "$WORK/$name") > "$WORK/$name.log" 2>&1; then
        cat "$WORK/$name.log"
        not_ok "generated/$name: moecc failed"
        continue
    fi
    if diff -r "$top_srcdir/generated/$name" "$WORK/$name" > "$WORK/$name.diff"; then
        ok "generated/$name is what moecc emits now"
    else
        head -n 40 "$WORK/$name.diff"
        not_ok "generated/$name differs from what moecc emits now: run make update-generated"
    fi
done
# every example the backend accepts is checked in
for f in "$top_srcdir"/examples/*.moe; do
    name=$(basename "$f" .moe)
    if (cd "$top_srcdir" && "$MOECC" "examples/$name.moe" -o "$WORK/probe-$name") > /dev/null 2>&1 &&
        [ ! -d "$top_srcdir/generated/$name" ]; then
        not_ok "examples/$name.moe is generated but generated/$name is missing: run make update-generated"
    fi
done
[ $n -gt 0 ] && ok "$n generated directories checked"
# the CUDA gradient arena's reused rooms never overlap while both are live
# (grad_rooms.py derives their lives from the backward code itself), for
# every generated model and the benchmark configs; and with recompute =
# all (P, S, GCViT-MoE on one GPU, hier.moe, damex: MoE, attention, window
# attention and MLP rooms shared by their layers) the backward reads a
# shared room only while it holds that layer's values (recompute_rooms.py
# follows the step's code); and GRAD_STORED matches the backward
# (grad_stored.py)
with_recompute "$top_srcdir/bench/gpu_p.moe" "$WORK/gpu_p_rc.moe" || not_ok "with_recompute edits gpu_p.moe"
with_recompute "$top_srcdir/bench/gpu_s.moe" "$WORK/gpu_s_rc.moe" || not_ok "with_recompute edits gpu_s.moe"
sed -e 's/^    batch = 1024$/    batch = 128/' -e '/^parallel(/d' "$top_srcdir/examples/gcvit_moe.moe" > "$WORK/gcvit1.moe"
with_recompute "$WORK/gcvit1.moe" "$WORK/gcvit1_rc.moe" || not_ok "with_recompute edits gcvit_moe.moe"
with_recompute "$top_srcdir/tests/e2e/hier.moe" "$WORK/hier_rc.moe" || not_ok "with_recompute edits hier.moe"
with_recompute "$top_srcdir/examples/damex.moe" "$WORK/damex_rc.moe" || not_ok "with_recompute edits damex.moe"
for f in "$top_srcdir"/generated/*/model.cu "$top_srcdir"/bench/gpu_p.moe "$top_srcdir"/bench/gpu_s.moe \
    "$WORK/gpu_p_rc.moe" "$WORK/gpu_s_rc.moe" "$WORK/gcvit1_rc.moe" "$WORK/hier_rc.moe" "$WORK/damex_rc.moe"; do
    case $f in
    *.moe)
        name=$(basename "$f" .moe)
        "$MOECC" --target cuda "$f" -o "$WORK/rooms-$name" > /dev/null 2>&1 || { not_ok "$name: moecc failed"; continue; }
        dir=$WORK/rooms-$name ;;
    *)
        dir=$(dirname "$f"); name=$(basename "$dir") ;;
    esac
    if python3 "$top_srcdir/tests/e2e/grad_rooms.py" "$dir/model.cu" "$dir/model.h" > "$WORK/rooms-$name.log" 2>&1; then
        ok "$name: $(tail -n 1 "$WORK/rooms-$name.log")"
    else
        cat "$WORK/rooms-$name.log"
        not_ok "$name: gradient rooms overlap while both are live"
    fi
    # the gradients the step does not zero (GRAD_STORED) are each stored
    # by their one writer, and every such writer's are marked
    if python3 "$top_srcdir/tests/e2e/grad_stored.py" "$dir/model.cu" > "$WORK/stored-$name.log" 2>&1; then
        ok "$name: $(tail -n 1 "$WORK/stored-$name.log")"
    else
        cat "$WORK/stored-$name.log"
        not_ok "$name: GRAD_STORED does not match the backward's writers"
    fi
    # recompute = all's whole-block remake (plan_remake): every MoE layer
    # but the last of S (11), and of damex the MoE layer and the dense MLP
    # before the last of each (2), makes its block's first half again in
    # its backward, and the stream and norm outputs share rooms
    want=
    case $name in gpu_s_rc) want=11 ;; damex_rc) want=2 ;; esac
    if [ -n "$want" ]; then
        got=$(grep -c "the block's first half again" "$dir/model.cu")
        if [ "$got" = "$want" ]; then
            ok "$name: $got layers make their block's first half again"
        else
            not_ok "$name: $got layers make their block's first half again, $want expected"
        fi
    fi
    case $name in
    *_rc)
        if python3 "$top_srcdir/tests/e2e/recompute_rooms.py" "$dir/model.cu" > "$WORK/shared-$name.log" 2>&1; then
            ok "$name: $(tail -n 1 "$WORK/shared-$name.log")"
        else
            cat "$WORK/shared-$name.log"
            not_ok "$name: the backward reads a shared room while another layer's values are there"
        fi ;;
    esac
done
finish
