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

# gen NAME: compile examples/NAME.moe into $WORK/NAME and build it; the
# build must be warning-free.
gen() {
    (cd "$top_srcdir" && "$MOECC" "examples/$1.moe" -o "$WORK/$1") || return 1
    # a make of its own: not a sub-make of `make check' (no jobserver notes)
    env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -C "$WORK/$1" MOERT="$top_builddir" MOERT_SRC="$top_srcdir" \
        > "$WORK/$1.build.log" 2>&1 || {
        cat "$WORK/$1.build.log"
        return 1
    }
    if grep -q -i "warning" "$WORK/$1.build.log"; then
        cat "$WORK/$1.build.log"
        return 1
    fi
}

need_data() {
    for d in fashion-mnist mnist digits; do
        if [ ! -e "$DATA/$d" ]; then
            echo "# the example data is missing from $DATA: run make data"
            return 1
        fi
    done
}
