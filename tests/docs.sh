#!/bin/sh
# tests/docs.sh: doc/language.md documents every construct and parameter
# that `moecc --list` prints (the schema table, compiler/schema.c).
#
# For each construct the reference has a heading
#     ### `NAME` (CONTEXT)          or   ### 8.1 `NAME` (CONTEXT) ...
# (CONTEXT: statement, layer, router, optimizer, schedule, augmentation or
# selector; any level of heading), and for each parameter, in the section under that heading, a
# table row
#     | `PARAM` | TYPE | DEFAULT | RANGE / VALUES | MEANING |
# whose TYPE and DEFAULT (backticks aside) read as `moecc --list` prints
# them, and whose RANGE / VALUES cell names every allowed word of a word
# parameter. A heading or row for something the schema does not have is an
# error as well: the reference must not describe what moecc refuses.
#
# Environment: MOECC, the moecc to run (default ./moecc); top_srcdir, the
# source tree (default $srcdir, which the automake test harness sets, or .).
# Exit status: 0 pass, 1 fail, 99 hard error (automake's convention).

MOECC=${MOECC:-./moecc}
top_srcdir=${top_srcdir:-${srcdir:-.}}
doc=$top_srcdir/doc/language.md
me=docs.sh

if test ! -f "$doc"; then
    echo "$me: $doc: no such file" >&2
    exit 99
fi
tmp=${TMPDIR:-/tmp}/moecc-docs.$$
mkdir "$tmp" || exit 99
trap 'rm -rf "$tmp"' 0
trap 'exit 99' 1 2 13 15

if ! "$MOECC" --list >"$tmp/list.txt" 2>"$tmp/list.err"; then
    echo "$me: '$MOECC --list' failed:" >&2
    cat "$tmp/list.err" >&2
    exit 99
fi

# The schema as records, one a line, fields separated by tabs:
#   K  context  construct
#   P  context  construct  parameter  type  default  words
awk -v me="$me" '
function ctx_of(section) {
    if (section == "top-level statements") return "statement"
    if (section == "layers") return "layer"
    if (section == "routers") return "router"
    if (section == "optimizers") return "optimizer"
    if (section == "schedules") return "schedule"
    if (section == "augmentations") return "augmentation"
    if (section == "block selectors") return "selector"
    return ""
}
BEGIN { OFS = "\t"; bad = 0 }
/^[a-z][a-z -]*:$/ {
    section = substr($0, 1, length($0) - 1)
    ctx = ctx_of(section)
    if (ctx == "") {
        print me ": moecc --list has a section \"" section "\" this test does not know" > "/dev/stderr"
        bad = 1
    }
    next
}
/^  [a-z_]/ {
    name = substr($0, 3)
    sub(/ .*/, "", name)
    print "K", ctx, name
    next
}
/^      [a-z_]/ {
    rest = substr($0, 7)
    param = rest
    sub(/ .*/, "", param)
    rest = substr(rest, length(param) + 1)
    sub(/^ +/, "", rest)
    type = ""
    n = split("list of strings|list of calls|list of numbers|number or list|integer|number|boolean|string|word|size|map|call|selector", types, "|")
    for (i = 1; i <= n; i++) {
        if (substr(rest, 1, length(types[i])) == types[i] &&
            (length(rest) == length(types[i]) || substr(rest, length(types[i]) + 1, 1) == " ")) {
            type = types[i]
            break
        }
    }
    if (type == "") {
        print me ": cannot read the type of " name "." param " in: " $0 > "/dev/stderr"
        bad = 1
        next
    }
    rest = substr(rest, length(type) + 1)
    sub(/^ +/, "", rest)
    if (substr(rest, 1, 10) == "(required)") {
        def = "required"
        rest = substr(rest, 11)
    } else if (substr(rest, 1, 2) == "= ") {
        rest = substr(rest, 3)
        k = index(rest, "  ")
        def = k ? substr(rest, 1, k - 1) : rest
        rest = k ? substr(rest, k) : ""
    } else {
        print me ": cannot read the default of " name "." param " in: " $0 > "/dev/stderr"
        bad = 1
        next
    }
    sub(/^ +/, "", rest)
    words = ""
    if (substr(rest, 1, 1) == "{") {
        k = index(rest, "}")
        words = substr(rest, 2, k - 2)
    }
    print "P", ctx, name, param, type, def, words
    next
}
END { exit bad }
' "$tmp/list.txt" >"$tmp/schema.tsv" || exit 99

if ! grep -q '^K' "$tmp/schema.tsv"; then
    echo "$me: '$MOECC --list' printed no constructs" >&2
    exit 99
fi

# The reference as records of the same form, with the text of the cells:
#   K  context  construct  line
#   P  context  construct  parameter  type  default  values  line
awk '
function trim(s) { gsub(/^[ \t]+|[ \t]+$/, "", s); return s }
function plain(s) { gsub(/`/, "", s); return trim(s) }
BEGIN { OFS = "\t"; cur = "" }
/^```/ { fence = !fence; next }
fence { next }
/^#/ {
    cur = ""
    if (match($0, /^#+ ([0-9.]+ )?`[a-z0-9_]+` \([a-z]+\)/)) {
        h = substr($0, RSTART, RLENGTH)
        name = h; sub(/^[^`]*`/, "", name); sub(/`.*/, "", name)
        ctx = h; sub(/.*\(/, "", ctx); sub(/\).*/, "", ctx)
        cur = ctx "\t" name
        print "K", ctx, name, NR
    }
    next
}
cur != "" && /^\| *`[a-z0-9_]+` *\|/ {
    n = split($0, f, "|")
    if (n < 6) next
    print "P", cur, plain(f[2]), trim(f[3]), plain(f[4]), f[5], NR
}
' "$doc" >"$tmp/doc.tsv" || exit 99

# Compare.
awk -F '\t' -v doc="$doc" -v me="$me" '
FNR == 1 { file++ }
file == 1 && $1 == "K" { sk[$2 "\t" $3] = 1; korder[++nk] = $2 "\t" $3; next }
file == 1 && $1 == "P" {
    key = $2 "\t" $3 "\t" $4
    sp[key] = 1; porder[++np] = key
    stype[key] = $5; sdef[key] = $6; swords[key] = $7
    next
}
file == 2 && $1 == "K" {
    key = $2 "\t" $3
    if (key in dk) {
        printf "%s:%d: `%s` (%s) is documented twice (first at line %d)\n", doc, $4, $3, $2, dk[key]
        bad++
    }
    dk[key] = $4
    next
}
file == 2 && $1 == "P" {
    key = $2 "\t" $3 "\t" $4
    if (key in dp) {
        printf "%s:%d: parameter `%s` of `%s` (%s) has two rows\n", doc, $8, $4, $3, $2
        bad++
    }
    dp[key] = $8; dtype[key] = $5; ddef[key] = $6; dvals[key] = $7
    next
}
END {
    for (i = 1; i <= nk; i++) {
        key = korder[i]
        split(key, k, "\t")
        if (!(key in dk)) {
            printf "%s: the %s `%s` is not documented: add a heading \"### `%s` (%s)\"\n", doc, k[1], k[2], k[2], k[1]
            bad++
        }
    }
    for (i = 1; i <= np; i++) {
        key = porder[i]
        split(key, k, "\t")
        what = sprintf("parameter `%s` of `%s` (%s)", k[3], k[2], k[1])
        if (!(key in dp)) {
            if ((k[1] "\t" k[2]) in dk)
                printf "%s:%d: %s is not documented: add a row \"| `%s` | %s | %s | ... | ... |\"\n", doc, dk[k[1] "\t" k[2]], what, k[3], stype[key], sdef[key]
            else
                printf "%s: %s is not documented\n", doc, what
            bad++
            continue
        }
        if (dtype[key] != stype[key]) {
            printf "%s:%d: %s: the type is \"%s\", not \"%s\"\n", doc, dp[key], what, stype[key], dtype[key]
            bad++
        }
        if (ddef[key] != sdef[key]) {
            printf "%s:%d: %s: the default is \"%s\", not \"%s\"\n", doc, dp[key], what, sdef[key], ddef[key]
            bad++
        }
        if (swords[key] != "") {
            nw = split(swords[key], w, "|")
            for (j = 1; j <= nw; j++) {
                if (index(dvals[key], "`" w[j] "`") == 0) {
                    printf "%s:%d: %s: the value `%s` is not listed\n", doc, dp[key], what, w[j]
                    bad++
                }
            }
        }
    }
    for (key in dk) {
        if (!(key in sk)) {
            split(key, k, "\t")
            printf "%s:%d: `%s` (%s) is documented, but moecc --list has no such %s\n", doc, dk[key], k[2], k[1], k[1]
            bad++
        }
    }
    for (key in dp) {
        if (!(key in sp)) {
            split(key, k, "\t")
            printf "%s:%d: parameter `%s` of `%s` (%s) is documented, but moecc --list has no such parameter\n", doc, dp[key], k[3], k[2], k[1]
            bad++
        }
    }
    if (bad) {
        printf "%s: FAIL: %d problem%s between doc/language.md and moecc --list\n", me, bad, bad == 1 ? "" : "s"
        exit 1
    }
    printf "%s: ok: %d constructs and %d parameters documented\n", me, nk, np
}
' "$tmp/schema.tsv" "$tmp/doc.tsv"
