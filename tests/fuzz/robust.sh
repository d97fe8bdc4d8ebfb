#!/bin/sh
# robust.sh: moecc never crashes, hangs or gives up on hostile input.
#
#   MOECC=/path/to/moecc FUZZ_GEN=/path/to/fuzz_gen tests/fuzz/robust.sh
#
# fuzz_gen (fuzz_gen.c) writes a few thousand inputs: empty and comment-only
# files, garbage bytes, a 1 MB line, 100k nested brackets, 100k unary
# minus, a 100k-term sum, enormous numbers, a 10 KB identifier, NUL bytes,
# everything unterminated, huge models, random token soup, and mutations of
# every examples/*.moe and tests/golden/*.moe. moecc --check runs on each
# (and, where it passes, moecc --summary and moecc -o, the code generation
# of both backends), and must
#   - exit 0 (no errors) or 1 (errors in the input): never 2 (usage or
#     I/O), never killed by a signal, never a sanitizer report;
#   - say why when it exits 1: a line "... error: ..." and the count;
#   - finish within 10 seconds (a timeout is a failure).
# Each failing input is kept in tests/fuzz/fuzz_failures/ of the build
# tree for a look. Runs JOBS (default 2) at once. Exit status 0 when everything
# passed, 1 when something failed, 99 when the test could not run.
#
# Environment: MOECC, FUZZ_GEN (default: in the build tree, found from
# top_builddir or this script's place), top_srcdir, JOBS, ROBUST_KEEP=1
# to keep the generated inputs.

here=$(cd "$(dirname "$0")" && pwd)
top_srcdir=${top_srcdir:-$here/../..}
top_builddir=${top_builddir:-$top_srcdir}
MOECC=${MOECC:-$top_builddir/moecc}
FUZZ_GEN=${FUZZ_GEN:-$top_builddir/tests/fuzz/fuzz_gen}
JOBS=${JOBS:-2}

for prog in "$MOECC" "$FUZZ_GEN"; do
    if ! test -x "$prog"; then
        echo "robust.sh: cannot run '$prog' (set MOECC and FUZZ_GEN)" >&2
        exit 99
    fi
done

# A sanitizer build must not pass off its reports as exit status 1 (an
# error in the input): give them their own exit codes.
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}exitcode=86:detect_leaks=1"
UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}halt_on_error=1:exitcode=87:print_stacktrace=1"
export ASAN_OPTIONS UBSAN_OPTIONS

if command -v timeout >/dev/null 2>&1; then
    limit="timeout 10"
else
    echo "robust.sh: no timeout(1): hangs are not caught" >&2
    limit=
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/moecc-robust.XXXXXX") || exit 99
if test "x$ROBUST_KEEP" = x1; then
    echo "robust.sh: keeping the inputs in $tmp"
else
    trap 'rm -rf "$tmp"' EXIT
fi
trap 'exit 130' INT TERM

mkdir "$tmp/in" || exit 99
n=$("$FUZZ_GEN" "$tmp/in" "$top_srcdir"/examples/*.moe "$top_srcdir"/tests/golden/*.moe) || {
    echo "robust.sh: fuzz_gen failed" >&2
    exit 99
}
echo "robust.sh: $n inputs"
ls "$tmp/in" >"$tmp/list"

# verdict FILE JOB WHAT: whether moecc's run on FILE (exit status $rc, its
# messages in err.JOB) was a good one; if not, say why on stdout
verdict() {
    why=
    case $rc in
    0) grep -q ': error: ' "$tmp/err.$2" && why="exit status 0 after an error" ;;
    1) grep -qE '^[0-9]+ errors?[ ,]' "$tmp/err.$2" || why="exit status 1 without an error count" ;;
    124) why="timed out after 10 s" ;;
    86) why="AddressSanitizer report" ;;
    87) why="UndefinedBehaviorSanitizer report" ;;
    *) why="exit status $rc" ;;
    esac
    if test -z "$why" && grep -qE '^(==[0-9]+==ERROR|.*runtime error: )' "$tmp/err.$2"; then
        why="sanitizer report"
    fi
    if test -n "$why"; then
        echo "FAIL $1 ($3): $why"
        grep -E 'ERROR|runtime error|SUMMARY|#[0-9] ' "$tmp/err.$2" | head -n 12
        return 1
    fi
    return 0
}

# moecc_on FILE JOB WHAT ARG...: moecc ARG... (exit status in $rc, its
# messages in err.JOB), then its verdict
# (sh has no local variables: its own names start with on_)
moecc_on() {
    on_file=$1 on_job=$2 on_what=$3
    shift 3
    # shellcheck disable=SC2086 # limit is a command and its argument
    $limit "$MOECC" "$@" >/dev/null 2>"$tmp/err.$on_job"
    rc=$?
    verdict "$on_file" "$on_job" "$on_what"
}

# check FILE JOB: moecc --check on one input; where it passes, the
# summary and the code of both backends too (moecc -o: exit 0, or 1 with
# the errors counted). On failure, say why on stdout.
check() {
    moecc_on "$1" "$2" "moecc --check" --check "$tmp/in/$1" || return 1
    test $rc -eq 0 || return 0
    echo "$1" >>"$tmp/valid.$2"
    moecc_on "$1" "$2" "moecc --summary" --summary "$tmp/in/$1" || return 1
    rm -rf "$tmp/gen.$2"
    moecc_on "$1" "$2" "moecc -o" "$tmp/in/$1" -o "$tmp/gen.$2" || return 1
    if test $rc -eq 0 && ! test -f "$tmp/gen.$2/model.c"; then
        echo "FAIL $1 (moecc -o): exit status 0, but no model.c"
        return 1
    fi
    return 0
}

# Run JOBS workers, each over every JOBS-th input.
job=0
while test $job -lt "$JOBS"; do
    (
        i=0
        while read -r f; do
            if test $((i % JOBS)) -eq $job; then
                check "$f" $job || {

                    echo "$f" >>"$tmp/failed.$job"
                }
            fi
            i=$((i + 1))
        done <"$tmp/list"
        exit 0
    ) >"$tmp/log.$job" 2>&1 &
    job=$((job + 1))
done
wait

cat "$tmp"/log.*
failed=$(cat "$tmp"/failed.* 2>/dev/null | wc -l)
failed=$((failed + 0))
if test "$failed" -gt 0; then
    keep=$top_builddir/tests/fuzz/fuzz_failures
    mkdir -p "$keep"
    for f in $(cat "$tmp"/failed.*); do
        cp "$tmp/in/$f" "$keep/"
    done
    echo "robust.sh: the failing inputs are in $keep/"
fi
valid=$(cat "$tmp"/valid.* 2>/dev/null | wc -l)
echo "$((n - failed)) passed, $failed failed ($((valid + 0)) valid models also through --summary and -o)"
test "$failed" -eq 0
