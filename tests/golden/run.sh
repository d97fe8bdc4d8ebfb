#!/bin/sh
# run.sh: golden tests of moecc's diagnostics and command line.
#
#   MOECC=/path/to/moecc tests/golden/run.sh [--update] [NAME...]
#
# Each tests/golden/NAME.moe is one bad (or warning) program. The runner
# runs `moecc --check NAME.moe` from tests/golden, so that the paths in the
# messages read "NAME.moe:7:5: error: ...", and compares
#   - stderr with NAME.err, byte for byte (a diff is printed when they differ),
#   - the exit status with the expected one (1 unless the case says otherwise),
#   - stdout with nothing.
# A case sets its expectations in comment lines near its top:
#   # exit: 0              the expected exit status (default 1)
#   # args: --werror       extra options before the file name
# --update rewrites NAME.err from what moecc prints now (read every change
# before committing it). NAMEs limit the run to those cases.
#
# Then it checks that every examples/*.moe passes --check silently, the
# parameter count of `--summary examples/damex.moe`, and the command line:
# --help, --version, a missing input, a missing file, a directory, an
# unknown option. It ends with "N passed, N failed"; the exit status is 0
# when nothing failed, 1 otherwise, 99 when it cannot run at all.
#
# Environment: MOECC (default: moecc at the top of the build tree, found
# from this script's place), top_srcdir (default: two folders up).

here=$(cd "$(dirname "$0")" && pwd)
top_srcdir=${top_srcdir:-$here/../..}
top_srcdir=$(cd "$top_srcdir" && pwd)
MOECC=${MOECC:-$top_srcdir/moecc}
case $MOECC in
*/*) MOECC=$(cd "$(dirname "$MOECC")" && pwd)/$(basename "$MOECC") ;;
esac
if ! test -x "$MOECC" && ! command -v "$MOECC" >/dev/null 2>&1; then
    echo "run.sh: no moecc to test at '$MOECC' (set MOECC)" >&2
    exit 99
fi

update=no
if test "x$1" = x--update; then
    update=yes
    shift
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/moecc-golden.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

passed=0
failed=0

pass() {
    passed=$((passed + 1))
    echo "ok   $1"
}

fail() {
    failed=$((failed + 1))
    echo "FAIL $1: $2"
}

# ---- diagnostics of bad programs ---------------------------------------------

if test $# -gt 0; then
    cases=$*
else
    cases=$(cd "$here" && ls *.moe | sed 's/\.moe$//')
fi

for name in $cases; do
    src=$here/$name.moe
    if ! test -f "$src"; then
        fail "$name" "no such case $src"
        continue
    fi
    want_rc=$(sed -n 's/^# exit: //p' "$src" | head -n 1)
    want_rc=${want_rc:-1}
    args=$(sed -n 's/^# args: //p' "$src" | head -n 1)
    # shellcheck disable=SC2086 # args is a list of words
    (cd "$here" && exec "$MOECC" --check $args "$name.moe") >"$tmp/out" 2>"$tmp/err"
    rc=$?
    if test "$update" = yes; then
        if ! cmp -s "$tmp/err" "$here/$name.err"; then
            cp "$tmp/err" "$here/$name.err"
            echo "updated $name.err"
        fi
    fi
    if ! test -f "$here/$name.err"; then
        fail "$name" "no $name.err (run.sh --update $name writes it)"
        continue
    fi
    ok=yes
    if test "$rc" != "$want_rc"; then
        fail "$name" "exit status $rc, expected $want_rc"
        ok=no
    fi
    if ! cmp -s "$tmp/err" "$here/$name.err"; then
        fail "$name" "stderr differs from $name.err (- expected, + actual):"
        diff -u "$here/$name.err" "$tmp/err" | sed '1,2d'
        ok=no
    fi
    if test -s "$tmp/out"; then
        fail "$name" "--check wrote to stdout:"
        head -n 5 "$tmp/out"
        ok=no
    fi
    test $ok = yes && pass "$name"
done

# With case names given, only those run.
if test $# -gt 0; then
    echo "$passed passed, $failed failed"
    test $failed -eq 0
    exit
fi

# ---- every case is in tests/tests.mk (so that `make dist' ships it) ------------

if test -f "$top_srcdir/tests/tests.mk"; then
    missing=
    for f in $(cd "$here" && ls *.moe *.err); do
        grep -q "tests/golden/$f\( \|\$\)" "$top_srcdir/tests/tests.mk" || missing="$missing $f"
    done
    if test -n "$missing"; then
        fail "tests.mk" "GOLDEN_CASES in tests/tests.mk leaves out:$missing"
    else
        pass "tests.mk lists every case"
    fi
fi

# ---- good programs -----------------------------------------------------------

for f in "$top_srcdir"/examples/*.moe; do
    test -f "$f" || continue
    name=examples/$(basename "$f")
    "$MOECC" --check "$f" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    if test $rc -ne 0 || test -s "$tmp/err"; then
        fail "$name" "moecc --check: exit status $rc, expected 0 and no messages:"
        head -n 20 "$tmp/err"
    else
        pass "$name"
    fi
done

# The parameter count of the DAMEX example, worked out by hand: patch
# embedding 128 x 1 x 7 x 7 + 128 = 6,400 + positions 16 x 128 = 2,048
# + 4 blocks x 66,560 (two norms, attention) + 2 dense MLPs x 65,920
# + 2 MoE layers x 198,144 + final norm 256 + 3 heads x 1,290 = 806,942;
# the experts hold 2 x 197,760 of it.
want='parameters: 806,942 (experts 395,520)'
"$MOECC" --summary "$top_srcdir/examples/damex.moe" >"$tmp/out" 2>"$tmp/err"
rc=$?
if test $rc -eq 0 && grep -qxF "$want" "$tmp/out" && ! test -s "$tmp/err"; then
    pass "summary of damex.moe"
else
    fail "summary of damex.moe" "exit status $rc; expected the line '$want' in:"
    grep '^parameters' "$tmp/out"
    head -n 5 "$tmp/err"
fi

# The GPU memory line of --summary (config S of the benchmark, on one GPU
# and expert parallel on two, and GCViT-MoE on 8 in groups of 4): its parts add up to its total, and its
# activations and weights are the arenas of the model.cu that moecc
# writes for one GPU (DEV_LAYOUT: 4 bytes a float, the activations in
# their bf16 precision's layout, act_floats16, as the three are bf16; the
# weights are 4 arrays of floats and a byte mask per parameter of this
# GPU's share).
# check_cuda.sh holds the total to what a trainer allocates on the GPU.
cp "$top_srcdir/bench/gpu_s.moe" "$tmp/gpu_s.moe"
{ cat "$top_srcdir/bench/gpu_s.moe"; echo "parallel(data = 2, expert = 2)"; } > "$tmp/gpu_s_ep2.moe"
cp "$top_srcdir/examples/gcvit_moe.moe" "$tmp/gcvit_moe.moe"
# config S at a batch of 131,072: 3.3 billion values a layer, past a
# 32-bit int (the arenas' sizes and offsets are 64-bit; rows stay below)
sed 's/^\( *batch = \)[0-9]*/\1131072/' "$top_srcdir/bench/gpu_s.moe" > "$tmp/gpu_s_big.moe"
for name in gpu_s gpu_s_ep2 gcvit_moe gpu_s_big; do
    "$MOECC" --summary "$tmp/$name.moe" >"$tmp/out" 2>"$tmp/err" &&
        "$MOECC" --target cuda "$tmp/$name.moe" -o "$tmp/$name" >/dev/null 2>&1
    rc=$?
    mem=$(sed -n 's/^gpu memory: \([0-9,]*\) MiB.*/\1/p' "$tmp/out" | tr -d ,)
    parts=$(grep -A1 '^gpu memory:' "$tmp/out" | tail -n 1 | tr -d , | sed 's/bf16//' | grep -oE '[0-9]+' | tr '\n' ' ')
    layout=$(sed -n 's/^ *\([0-9]*\)L, \/\* \(params\|act_floats16: in bf16 precision\) \*\/$/\1/p' "$tmp/$name/model.cu" 2>/dev/null |
        tr '\n' ' ')
    if test $rc -eq 0 && test -n "$mem" && echo "$mem $parts $layout" | awk '{
            sum = $2 + $3 + $4 + $5 + $6
            w = 17 * $7 / 1048576; a = 4 * $8 / 1048576
            d1 = sum - $1; d2 = $2 - w; d3 = $3 - a
            exit !(NF == 8 && d1 * d1 <= 9 && d2 * d2 <= 0.25 && d3 * d3 <= 0.25) }'; then
        pass "summary of $name.moe: GPU memory $mem MiB, its parts and arenas agree ($parts; $layout)"
    else
        fail "summary of $name.moe: GPU memory" "exit status $rc; total '$mem', parts '$parts', layout '$layout' in:"
        grep -A1 '^gpu memory' "$tmp/out"
        head -n 5 "$tmp/err"
    fi
done
# the CPU backend's code of the big batch too
rm -rf "$tmp/gpu_s_big"
if "$MOECC" --target cpu "$tmp/gpu_s_big.moe" -o "$tmp/gpu_s_big" >/dev/null 2>"$tmp/err" &&
    grep -q '^#define BATCH 131072 ' "$tmp/gpu_s_big/model.h"; then
    pass "gpu_s_big.moe: the CPU backend's code for a batch of 131072"
else
    fail "gpu_s_big.moe: the CPU backend's code for a batch of 131072" "in:"
    head -n 5 "$tmp/err"
fi
# no GPU line where the CUDA trainer is not made
for args in "--target cpu examples/damex.moe"; do
    # shellcheck disable=SC2086 # two words on purpose
    (cd "$top_srcdir" && "$MOECC" --summary $args) >"$tmp/out" 2>"$tmp/err"
    if test $? -eq 0 && grep -q '^parameters' "$tmp/out" && ! grep -q '^gpu memory' "$tmp/out"; then
        pass "summary, $args: no GPU memory line"
    else
        fail "summary, $args: no GPU memory line" "in:"
        tail -n 3 "$tmp/out"
    fi
done

# The CUDA backend generates the hierarchical layers, GCViT-MoE's 14x14
# windows (196 tokens, heads of 32) included, and refuses at its place an
# attention too long even for rows of it in shared memory.
if (cd "$top_srcdir" && "$MOECC" --check --target cuda tests/e2e/hier.moe) >"$tmp/out" 2>"$tmp/err"; then
    pass "--target cuda takes hier.moe"
else
    fail "--target cuda takes hier.moe" "in:"
    head -n 5 "$tmp/err"
fi
if (cd "$top_srcdir" && "$MOECC" --check --target cuda examples/gcvit_moe.moe) >"$tmp/out" 2>"$tmp/err"; then
    pass "--target cuda takes GCViT-MoE's windows of 196 tokens"
else
    fail "--target cuda takes GCViT-MoE's windows of 196 tokens" "in:"
    head -n 5 "$tmp/err"
fi
# 352x352 in patches of 4: 7,744 tokens of head width 16; 8 rows of their
# scores need more than the 227 KiB
cat > "$tmp/long.moe" << EOF
dataset mnist(format = mnist_json, path = "mnist", classes = 10, test_split = 0.2, resize = bilinear)
model long {
    input(channels = 1, height = 352, width = 352)
    patch_embed(patch = 4, dim = 64)
    attention(heads = 4)
    pool(kind = mean)
    classifier()
}
train { batch = 2 steps = 1 }
EOF
"$MOECC" --check --target cuda "$tmp/long.moe" >"$tmp/out" 2>"$tmp/err"
if test $? -eq 1 && grep -q "^$tmp/long.moe:5:5: error: .*7744 tokens of head width 16 need 245 KiB" "$tmp/err"; then
    pass "--target cuda: an attention too long for its kernels is refused at its place"
else
    fail "--target cuda: an attention too long for its kernels is refused at its place" "in:"
    head -n 5 "$tmp/err"
fi

# A merge whose layer norm is wider than the default 48 KiB of shared
# memory allows (4 x 256 = 1024): generated, with its setup in
# dev_init_tables; twice that (2048) is refused at the merge.
for w in 256 512; do
    cat > "$tmp/ln$w.moe" << EOF
dataset mnist(format = mnist_json, path = "mnist", classes = 10, test_split = 0.2)
model wide {
    input(channels = 1, height = 28, width = 28)
    patch_embed(patch = 7, dim = $w)
    downsample(dim = 64)
    layernorm()
    pool(kind = mean)
    classifier()
}
train { batch = 8  steps = 1 }
EOF
done
if "$MOECC" --target cuda "$tmp/ln256.moe" -o "$tmp/ln256" > "$tmp/out" 2> "$tmp/err" &&
    grep -q '^    layernorm_setup<1024>();$' "$tmp/ln256/model.cu" &&
    grep -q 'layernorm_backward<1024>(' "$tmp/ln256/model.cu"; then
    pass "--target cuda: a merge's 1024-wide layer norm, its shared memory asked for"
else
    fail "--target cuda: a merge's 1024-wide layer norm, its shared memory asked for" "in:"
    head -n 5 "$tmp/err"
fi
if "$MOECC" --target cuda "$tmp/ln512.moe" -o "$tmp/ln512" > "$tmp/out" 2> "$tmp/err"; then
    fail "--target cuda refuses a 2048-wide merge" "(it compiled)"
elif grep -q "ln512.moe:5:5: error: the CUDA backend's layer norm takes widths up to 1024, not the 2048 of the merged tokens" "$tmp/err"; then
    pass "--target cuda refuses a 2048-wide merge at its place"
else
    fail "--target cuda refuses a 2048-wide merge at its place" "in:"
    head -n 5 "$tmp/err"
fi

# ---- the command line ----------------------------------------------------------

# cli NAME WANT_RC PATTERN STREAM ARGS...: run moecc with ARGS; expect exit
# status WANT_RC and a line matching PATTERN (grep -E) on STREAM (out, err).
cli() {
    name=$1 want_rc=$2 pattern=$3 stream=$4
    shift 4
    (cd "$tmp" && exec "$MOECC" "$@") >"$tmp/out" 2>"$tmp/err" </dev/null
    rc=$?
    if test $rc -ne "$want_rc"; then
        fail "cli: $name" "exit status $rc, expected $want_rc"
        head -n 5 "$tmp/err"
    elif ! grep -qE -- "$pattern" "$tmp/$stream"; then
        fail "cli: $name" "no line matching '$pattern' on std$stream:"
        head -n 5 "$tmp/$stream"
    else
        pass "cli: $name"
    fi
}

mkdir "$tmp/adir"
cp "$top_srcdir/examples/damex.moe" "$tmp/good.moe"
cli "--help" 0 '^Usage: moecc ' out --help
cli "-h" 0 '^  -c, --check ' out -h
cli "--version" 0 '^moecc [0-9]+\.[0-9]+' out --version
cli "--list" 0 '^  moe - ' out --list
cli "no input file" 2 '^moecc: no input file$' err --check
cli "missing file" 2 "^moecc: no-such-file\\.moe: No such file or directory\$" err --check no-such-file.moe
cli "a directory" 2 '^moecc: adir: is a directory$' err --check adir
cli "unknown option" 2 "^moecc: unknown option '--frobnicate'\$" err --frobnicate --check good.moe
cli "unknown short option" 2 "^moecc: unknown option '-q'\$" err -q --check good.moe
cli "option without its value" 2 "^moecc: option '--max-errors' needs a value\$" err --check good.moe --max-errors
cli "bad --max-errors" 2 "^moecc: --max-errors needs a number" err --max-errors=lots --check good.moe
cli "two input files" 2 "^moecc: one input file at a time" err --check good.moe good.moe
cli "nothing to do" 2 '^moecc: nothing to do' err good.moe
cli "--dump-tokens" 0 '^1[0-9]:[0-9]+	identifier	dataset$' out --dump-tokens good.moe
cli "--dump-ast" 0 '^node model damex    @[0-9]+:1$' out --dump-ast good.moe

echo "$passed passed, $failed failed"
test $failed -eq 0
