#!/bin/sh
# cpu.sh: `make bench-cpu`. Each CPU benchmark config trained by moecc's
# generated trainer and by a PyTorch model of the same model
# (tests/tools/torch_ref.py: per-expert loop, index_add combine), one full
# training step (forward, backward, AdamW) on random images, on the same
# machine in one run. Prints both and the speed-up; appends them to
# bench/results-cpu.txt in the build tree.
set -u
: "${top_srcdir:=.}" "${top_builddir:=.}" "${MOECC:=$top_builddir/moecc}"
: "${PYTHON_TORCH:=}" "${THREADS:=2}" "${STEPS:=8}"
work=$(mktemp -d "${TMPDIR:-/tmp}/moecc-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
out=$top_builddir/bench-cpu.txt
{
    echo "# make bench-cpu, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores: $(grep -m 1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    echo "# threads $THREADS, mean of $STEPS steps after 2 warm-up steps"
} | tee -a "$out"
for cfg in cpu_small cpu_large; do
    (cd "$top_srcdir" && "$MOECC" "bench/$cfg.moe" -o "$work/$cfg") || exit 1
    env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -C "$work/$cfg" MOERT="$top_builddir" MOERT_SRC="$top_srcdir" \
        BACKEND=cpu > /dev/null || exit 1
    ours=$(cd "$work/$cfg" && ./train --bench --steps $((STEPS + 2)) --threads "$THREADS" | grep '^moecc')
    echo "$ours" | tee -a "$out"
    if [ -n "$PYTHON_TORCH" ] && [ "$PYTHON_TORCH" != no ]; then
        theirs=$("$PYTHON_TORCH" "$top_srcdir/tests/tools/torch_ref.py" bench "$work/$cfg" --steps "$STEPS" \
            --threads "$THREADS" | grep '^pytorch')
        echo "$theirs" | tee -a "$out"
        a=$(echo "$ours" | sed 's/.* \([0-9.]*\) images\/s.*/\1/')
        b=$(echo "$theirs" | sed 's/.* \([0-9.]*\) images\/s.*/\1/')
        awk -v a="$a" -v b="$b" -v c="$cfg" 'BEGIN { printf "%s: moecc is %.2fx PyTorch\n", c, a / b }' | tee -a "$out"
    else
        echo "(no python3 with torch: PyTorch not measured)"
    fi
done
