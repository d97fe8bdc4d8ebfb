# common.sh: shared by the end-to-end tests (sourced). Needs MOECC (the
# moecc binary), top_srcdir and top_builddir; the data directory is
# $MOECC_DATA or $top_builddir/data (`make data`).
set -u
: "${top_srcdir:=.}"
: "${top_builddir:=.}"
: "${MOECC:=$top_builddir/moecc}"
top_srcdir=$(cd "$top_srcdir" && pwd)
top_builddir=$(cd "$top_builddir" && pwd)
case $MOECC in /*) ;; *) MOECC=$(pwd)/$MOECC ;; esac
DATA=${MOECC_DATA:-$top_builddir/data}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/moecc-e2e.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
passed=0
failed=0

ok() { passed=$((passed + 1)); echo "ok - $*"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $*"; }
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}

# compile_or_refused NAME FILE [MOECC OPTIONS...]: moecc FILE -o $WORK/NAME
# (FILE relative to the source tree, or absolute). Returns 0 when moecc
# wrote the directory; 2 when it refused the model with a located error that
# names what the backend does not generate or apply (reported as ok: a
# refusal that says where and why is the expected behaviour); 1 otherwise
# (reported as not ok).
compile_or_refused() {
    c_name=$1
    c_file=$2
    shift 2
    c_out=$(cd "$top_srcdir" && "$MOECC" "$@" "$c_file" -o "$WORK/$c_name" 2>&1)
    c_rc=$?
    if [ $c_rc -eq 1 ] &&
        printf '%s\n' "$c_out" | grep -q ':[0-9]*:[0-9]*: error: .*\(does not generate\|does not apply\|CUDA backend\)'; then
        ok "$c_name: refused${1:+ ($*)}, and says where and why: $(printf '%s\n' "$c_out" | grep -m 1 'error:')"
        return 2
    fi
    if [ $c_rc -ne 0 ]; then
        printf '%s\n' "$c_out"
        not_ok "$c_name: moecc $* (exit $c_rc)"
        return 1
    fi
}

# gen NAME [FILE]: compile FILE (default examples/NAME.moe) into $WORK/NAME
# and build it; the build must be warning-free.
gen() {
    name=$1
    (cd "$top_srcdir" && "$MOECC" "${2:-examples/$name.moe}" -o "$WORK/$name") || return 1
    # a make of its own, not a sub-make of `make check' (no jobserver
    # notes); with the runtime built with sanitizers, the trainer too
    if [ -n "${SAN_CFLAGS:-}" ]; then
        set -- CFLAGS="-O1 -g $SAN_CFLAGS" LDFLAGS="${SAN_LDFLAGS:-}"
    else
        set --
    fi
    # the CPU trainer unless BACKEND says otherwise (the machines of make
    # check may have nvcc and no GPU)
    env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -C "$WORK/$name" MOERT="$top_builddir" MOERT_SRC="$top_srcdir" \
        BACKEND="${BACKEND:-cpu}" "$@" > "$WORK/$name.build.log" 2>&1 || {
        cat "$WORK/$name.build.log"
        return 1
    }
    # the compiler's warnings about the generated code (file:line:col)
    if grep -E -q '\.[ch]:[0-9]+:[0-9]+: warning' "$WORK/$name.build.log"; then
        cat "$WORK/$name.build.log"
        return 1
    fi
}

# gen_or_stop NAME FILE: gen, reported; the script ends (after finish) when
# the trainer does not build
gen_or_stop() {
    if gen "$1" "$2"; then
        ok "$(basename "$2") compiles and builds without warnings"
    else
        not_ok "$(basename "$2") compiles and builds"
        finish
        exit 1
    fi
}

# learns_mnist LABEL [ARGS...]: in a trainer's directory, ./train ARGS...
# (the .moe file's steps unless ARGS say) must reach above 80% on the MNIST
# test split
learns_mnist() {
    l_label=$1
    shift
    if ./train --data "$DATA" --eval-every 0 -q "$@" > run.log 2>&1 &&
        awk '/mnist / && /%/ { gsub("%", "", $2); exit !($2 > 80) }' run.log; then
        ok "$l_label learns MNIST: $(grep -m 1 'mnist  ' run.log | sed 's/  */ /g')"
    else
        cat run.log
        not_ok "$l_label learns MNIST (above 80%${*:+ with $*})"
    fi
}

# torch_check LABEL: in a trainer's directory, its first step against the
# PyTorch model of the same model (tests/tools/torch_ref.py), in fp32
torch_check() {
    if [ -z "${PYTHON_TORCH:-}" ] || [ "$PYTHON_TORCH" = no ]; then
        echo "# SKIP $1: the PyTorch cross-check needs python3 with torch (PYTHON_TORCH)"
        return 0
    fi
    ./train --data "$DATA" --dump-step step.safetensors > /dev/null 2>&1
    if "$PYTHON_TORCH" "$top_srcdir/tests/tools/torch_ref.py" check . step.safetensors > torch.log 2>&1; then
        ok "$1: PyTorch agrees: $(grep '^loss' torch.log); $(grep '^gradients' torch.log)"
    else
        cat torch.log
        not_ok "$1: PyTorch agrees on the loss and every gradient"
    fi
}

# nvcc_home NVCC: the toolkit directory of an nvcc, which may be a link or a
# wrapper script (/usr/local/bin/nvcc running /usr/local/cuda-13.0/bin/nvcc):
# the TOP that nvcc reports, else the parent of its directory
nvcc_home() {
    top=$("$1" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#. TOP=//p' | sed 1q)
    [ -n "$top" ] || top=$(dirname "$1")/..
    (cd "$top" 2>/dev/null && pwd) || echo "$top"
}

# hier14_moe OUT: tests/e2e/hier.moe with its first local windows at 14x14
# (196 tokens of head width 16: the attention's row tiles, kernels.cuh),
# written to OUT
hier14_moe() {
    sed '0,/window = 7)/s//window = 14)/' "$top_srcdir/tests/e2e/hier.moe" > "$1"
}

# with_cutmix SRC OUT: the .moe file SRC with every training batch mixed by
# CutMix (augment = [cutmix(alpha = 1.0, prob = 1.0)] after its train
# section's batch line), written to OUT
with_cutmix() {
    sed 's/^\(    batch = [0-9]*\) *$/\1\n    augment = [cutmix(alpha = 1.0, prob = 1.0)]/' "$1" > "$2"
}

# with_recompute SRC OUT [WORD]: the .moe file SRC with recompute = WORD
# (default all: the experts' rows and attention's q, k, v and heads'
# outputs) after its train section's batch line, written to OUT
with_recompute() {
    sed "s/^\\(    batch = [0-9]*\\) *\$/\\1\\n    recompute = ${3:-all}/" "$1" > "$2"
    grep -q "^    recompute = ${3:-all}\$" "$2"
}

need_data() {
    for d in fashion-mnist mnist digits; do
        if [ ! -e "$DATA/$d" ]; then
            echo "# the example data is missing from $DATA: run make data"
            return 1
        fi
    done
}
